"""Coverage of the app's own code, measured inside its container: what to add to the container
(``collect``), where its files came from (``paths``), and V8's coverage as lines (``v8``)."""
