// A plain `http` service: no third-party packages, so the image builds offline. The visit
// counter lives in Redis (compose.yaml), spoken to in its wire protocol over a plain socket.
const http = require("http");
const net = require("net");

const redisHost = process.env.REDIS_HOST;

// One Redis command, e.g. ["INCR", "visits"]; resolves with the reply's first line.
function redis(args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(6379, redisHost);
    let reply = "";
    socket.setTimeout(5000, () => socket.destroy(new Error("redis timed out")));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\r\n")) {
        socket.end();
        resolve(reply.split("\r\n")[0]);
      }
    });
    socket.on("error", reject);
    socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(""));
  });
}

const port = Number(process.env.PORT || 80);
const started = new Date().toISOString();

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ status: "ok", started }));
    return;
  }
  if (req.url === "/visits" && req.method === "POST") {
    if (!redisHost) {
      res.writeHead(503, { "Content-Type": "text/plain" });
      res.end("no REDIS_HOST\n");
      return;
    }
    redis(["INCR", "visits"]).then(
      (reply) => {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(JSON.stringify({ visits: Number(reply.slice(1)) }));
      },
      (err) => {
        res.writeHead(502, { "Content-Type": "text/plain" });
        res.end(`redis: ${err.message}\n`);
      },
    );
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
