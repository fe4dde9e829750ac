// A plain `http` service: no third-party packages, so the image builds offline.
const http = require("http");

const port = Number(process.env.PORT || 80);
const started = new Date().toISOString();

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ status: "ok", started }));
    return;
  }
  if (req.url === "/") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("Hello from the dockapp example!\n");
    return;
  }
  res.writeHead(404, { "Content-Type": "text/plain" });
  res.end("not found\n");
});

server.listen(port, "0.0.0.0", () => {
  console.log(`listening on ${port}`);
});

// PID 1 gets no default signal handlers: exit promptly on SIGTERM/SIGINT.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
