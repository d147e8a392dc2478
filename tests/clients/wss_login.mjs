// A GET and a WebSocket login over TLS with Node's own tls module (OpenSSL), a client dialtone
// did not write. Run by tests/tls_scorecard.rs:
//
//     node wss_login.mjs PORT CA_FILE TLS_VERSION NAME
//
// TLS_VERSION is 1.2 or 1.3. Prints one line per step; exits non-zero on anything unexpected.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

const [port, caFile, version, name] = process.argv.slice(2);
const pinned = { '1.2': 'TLSv1.2', '1.3': 'TLSv1.3' }[version];

function fail(message) {
  console.error(message);
  process.exit(1);
}

setTimeout(() => fail('no answer within 10 s'), 10_000).unref();

/// A connection whose bytes arrive in `received`, read with `until`.
function connect() {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port: Number(port),
      servername: 'localhost',
      ca: readFileSync(caFile),
      minVersion: pinned,
      maxVersion: pinned,
      ALPNProtocols: ['http/1.1'],
    });
    const conn = { socket, received: Buffer.alloc(0), waiting: null };
    socket.on('data', (chunk) => {
      conn.received = Buffer.concat([conn.received, chunk]);
      if (conn.waiting) conn.waiting();
    });
    socket.on('end', () => conn.waiting && conn.waiting());
    socket.once('secureConnect', () => resolve(conn));
    socket.once('error', reject);
  });
}

/// Waits until `test(received)` gives a value.
async function until(conn, test) {
  for (;;) {
    const value = test(conn.received);
    if (value !== undefined) return value;
    if (conn.socket.readableEnded) fail(`the server closed early: ${conn.received}`);
    await new Promise((resolve) => { conn.waiting = resolve; });
  }
}

function maskedText(text) {
  const payload = Buffer.from(text);
  if (payload.length >= 126) fail('a longer frame than this client writes');
  const mask = randomBytes(4);
  const body = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, body]);
}

/// The first text frame in `bytes` after `offset`, skipping Pings.
function textFrame(bytes, offset) {
  let at = offset;
  while (bytes.length >= at + 2) {
    const opcode = bytes[at] & 0x0f;
    let length = bytes[at + 1] & 0x7f;
    let start = at + 2;
    if (length === 126) {
      if (bytes.length < at + 4) return undefined;
      length = bytes.readUInt16BE(at + 2);
      start = at + 4;
    }
    if (bytes.length < start + length) return undefined;
    if (opcode === 0x1) return bytes.subarray(start, start + length).toString();
    if (opcode === 0x8) fail('the server closed the WebSocket');
    at = start + length;
  }
  return undefined;
}

const page = await connect();
page.socket.write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
const status = await until(page, (bytes) => {
  const text = bytes.toString();
  return text.includes('</html>') ? text.split('\r\n')[0] : undefined;
});
console.log(`GET ${status} over ${page.socket.getProtocol()}`);
if (!status.includes(' 200 ')) fail('not 200');
page.socket.end();

const ws = await connect();
const key = randomBytes(16).toString('base64');
ws.socket.write(
  `GET /ws HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: websocket\r\n` +
  `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
);
const headEnd = await until(ws, (bytes) => {
  const end = bytes.indexOf('\r\n\r\n');
  return end >= 0 ? end + 4 : undefined;
});
const upgrade = ws.received.subarray(0, headEnd).toString().split('\r\n')[0];
console.log(`UPGRADE ${upgrade} over ${ws.socket.getProtocol()}`);
if (!upgrade.includes(' 101 ')) fail('not 101');
ws.socket.write(maskedText(JSON.stringify({ type: 'login', username: name })));
const reply = await until(ws, (bytes) => textFrame(bytes, headEnd));
console.log(`LOGIN ${reply}`);
if (JSON.parse(reply).success !== true) fail('login refused');
ws.socket.end();
