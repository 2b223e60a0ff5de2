// WebSocket peer server on Node `ws`, for interop tests.
//
//   NODE_PATH=target/peers/node/node_modules node bench/peers/node_server.js [--host H] [--port P] [--ping-every MS]
//
// Prints its port on stdout (one line, the number) once listening. Port 0 (the default)
// picks a free port; pass the printed port back with --port to restart on the same one.
//
// Per connection (same commands as py_server.py):
//   * every text message is echoed, except the commands below;
//   * `ping` (text) is answered with `pong`;
//   * `close CODE [REASON]` closes the connection with that code and reason;
//   * `stats` answers `stats pongs=N pings=N rtt_max_ms=F client_pings=N`;
//   * `server-ping` sends one Ping at once and answers `server-pong rtt_ms=F` or `server-pong timeout`.
// Client Pings are answered by ws itself (autoPong). With --ping-every MS the server
// sends its own Ping every MS milliseconds and counts the Pongs.
// Exits on SIGTERM/SIGINT or when stdin reaches EOF (so it dies with its parent).
'use strict';
const { WebSocketServer } = require('ws');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));
const pingEvery = Number(arg('--ping-every', '0'));

const wss = new WebSocketServer({ host, port, maxPayload: 64 << 20 });

wss.on('connection', (ws) => {
  const stats = { pings: 0, pongs: 0, rttMax: 0, clientPings: 0 };
  const pending = new Map(); // payload -> {t0, cb}
  let seq = 0;

  function serverPing(cb) {
    const payload = String(++seq);
    stats.pings++;
    const t0 = process.hrtime.bigint();
    const timer = setTimeout(() => { pending.delete(payload); cb && cb(null); }, 2000);
    pending.set(payload, { t0, cb, timer });
    try { ws.ping(payload); } catch (e) { /* closed */ }
  }
  ws.on('pong', (data) => {
    const p = pending.get(data.toString());
    if (!p) return;
    pending.delete(data.toString());
    clearTimeout(p.timer);
    const rtt = Number(process.hrtime.bigint() - p.t0) / 1e6;
    stats.pongs++;
    if (rtt > stats.rttMax) stats.rttMax = rtt;
    p.cb && p.cb(rtt);
  });
  ws.on('ping', () => { stats.clientPings++; });
  const interval = pingEvery > 0 ? setInterval(() => serverPing(null), pingEvery) : null;
  ws.on('close', () => {
    if (interval) clearInterval(interval);
    for (const p of pending.values()) clearTimeout(p.timer);
  });
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.send(data, { binary: true }); return; }
    const msg = data.toString();
    if (msg === 'ping') ws.send('pong');
    else if (msg.startsWith('close ')) {
      const parts = msg.split(' ');
      ws.close(Number(parts[1]), parts.slice(2).join(' '));
    } else if (msg === 'stats') {
      ws.send(`stats pongs=${stats.pongs} pings=${stats.pings} rtt_max_ms=${stats.rttMax.toFixed(3)} client_pings=${stats.clientPings}`);
    } else if (msg === 'server-ping') {
      serverPing((rtt) => ws.send(rtt === null ? 'server-pong timeout' : `server-pong rtt_ms=${rtt.toFixed(3)}`));
    } else ws.send(msg);
  });
});

wss.on('listening', () => { process.stdout.write(`${wss.address().port}\n`); });
wss.on('error', (e) => { console.error(`node_server: ${e.message}`); process.exit(1); });

function stop() { for (const c of wss.clients) c.terminate(); wss.close(); process.exit(0); }
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (!process.stdin.isTTY) {
  process.stdin.on('end', stop);
  process.stdin.on('error', () => {});
  process.stdin.resume();
}
