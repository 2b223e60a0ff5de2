// Benchmark peer: the client a Node user would write with `ws`.
//
//   NODE_PATH=target/peers/node/node_modules node bench/peers/node_client.js URL \
//       [--ping-interval MS] [--pong-timeout MS] [--reconnect-delay MS] [--ca-file PEM]
//
// Heartbeat: the pattern from ws's README ("How to detect and close broken
// connections?"), turned around for a client that pings: every interval, if the
// previous ping was not answered within the pong timeout, terminate(); else ping.
// Reconnect after a fixed delay (the usual hand-written loop). --ping-interval 0
// turns the heartbeat off. Text messages go to stdout, stdin lines are sent.
'use strict';
const fs = require('fs');
const WebSocket = require('ws');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const url = process.argv[2];
const pingInterval = Number(arg('--ping-interval', '1000'));
const pongTimeout = Number(arg('--pong-timeout', '3000'));
const reconnectDelay = Number(arg('--reconnect-delay', '50'));
const caFile = arg('--ca-file', null);
const ca = caFile ? fs.readFileSync(caFile) : undefined;

let current = null;

function connect() {
  const ws = new WebSocket(url, { ca });
  let pingTimer = null;
  let pongTimer = null;

  function heartbeat() {
    // README pattern: any pong proves the connection alive.
    clearTimeout(pongTimer);
    pongTimer = null;
  }
  ws.on('open', () => {
    current = ws;
    if (pingInterval > 0) {
      pingTimer = setInterval(() => {
        ws.ping();
        if (!pongTimer) pongTimer = setTimeout(() => ws.terminate(), pongTimeout);
      }, pingInterval);
    }
  });
  ws.on('pong', heartbeat);
  ws.on('message', (data, isBinary) => {
    if (!isBinary) process.stdout.write(data.toString() + '\n');
  });
  ws.on('error', () => {});
  ws.on('close', () => {
    clearInterval(pingTimer);
    clearTimeout(pongTimer);
    if (current === ws) current = null;
    setTimeout(connect, reconnectDelay);
  });
}

let buf = '';
process.stdin.on('data', (chunk) => {
  buf += chunk.toString();
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (current) current.send(line);
  }
});
process.stdin.on('error', () => {});
process.on('SIGTERM', () => process.exit(0));
connect();
