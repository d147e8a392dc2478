// What the end-to-end tests stand on: the real dialtone binary, started and stopped here, and
// real Chromium processes (Debian's package) driven by Playwright, each with a fake camera.

import { spawn, spawnSync } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { X509Certificate, createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
export const artifacts = join(repo, 'target', 'e2e-artifacts');
const binary = process.env.DIALTONE_BIN || join(repo, 'target', 'debug', 'dialtone');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Why the suite cannot run here, or null. Under CI=true a missing browser is a failure. */
export function missing() {
  if (!existsSync(executablePath)) return `no browser at ${executablePath} (apt-get install chromium)`;
  if (!existsSync(binary)) return `no dialtone binary at ${binary} (cargo build)`;
  return null;
}

/**
 * Where the suite's servers keep their certificate: the first server dialtone starts makes it
 * (tls mode "auto"), every later one reuses it, and the browsers trust exactly that one.
 */
const suiteCerts = mkdtempSync(join(tmpdir(), 'dialtone-e2e-certs-'));

/**
 * Starts the real binary on 127.0.0.1 (port 0 picks one) and waits for its banner. `certs`
 * is the folder of its certificate: the suite's own unless another is given.
 */
export async function startServer({
  port = 0, dir, certs = suiteCerts, cluster, grace, presence, tls = 'auto', behindProxy, host = '127.0.0.1', netns, turnServer,
  access, acme, env,
} = {}) {
  const home = dir ?? mkdtempSync(join(tmpdir(), 'dialtone-e2e-'));
  const config = join(home, 'config.toml');
  // No ICE servers: the browsers find each other on loopback, and nothing leaves the machine.
  writeFileSync(config, [
    `listen = "${host}:${port}"`,
    `public_dir = ${JSON.stringify(join(repo, 'public'))}`,
    'ice_servers = []',
    ...(behindProxy ? ['behind_proxy = true'] : []),
    '[tls]',
    `mode = "${tls}"`,
    `cert = ${JSON.stringify(join(certs, 'cert.pem'))}`,
    `key = ${JSON.stringify(join(certs, 'key.pem'))}`,
    ...(acme ? Object.entries(acme).map(([k, v]) => `${k} = ${JSON.stringify(v)}`) : []),
    ...(grace === undefined ? [] : ['[websocket]', `resume_grace_secs = ${grace}`]),
    ...(presence ? ['[presence]', 'enabled = true'] : []),
    ...(cluster ? ['[cluster]', `redis_url = "${cluster.url}"`, `instance_id = "${cluster.id}"`] : []),
    ...(turnServer ? ['[turn_server]', ...Object.entries(turnServer).map(([k, v]) => `${k} = ${JSON.stringify(v)}`)] : []),
    ...(access ? ['[access]', ...Object.entries(access).map(([k, v]) => `${k} = ${JSON.stringify(v)}`)] : []),
    '',
  ].join('\n'));
  // `ip netns exec` execs the binary after entering the namespace: the child is dialtone itself.
  const command = netns ? ['ip', ['netns', 'exec', netns, binary, '--config', config]] : [binary, ['--config', config]];
  const child = spawn(...command, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  // With ACME the banner names the certificate's first domain, not the address listened on.
  const named = acme ? acme.domains[0] : host;
  const log = [];
  createInterface({ input: child.stderr }).on('line', (line) => log.push(line));
  const banner = [];
  const lines = createInterface({ input: child.stdout });
  const bound = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no banner in 20 s:\n${banner.join('\n')}\n${log.join('\n')}`)), 20000);
    child.once('exit', (code) => reject(new Error(`dialtone exited with ${code}:\n${log.join('\n')}`)));
    lines.on('line', (line) => {
      banner.push(line);
      if (line === 'Press Ctrl-C to stop.') {
        clearTimeout(timer);
        // With TLS off (behind a proxy) the banner says "listening on http://…".
        const match = banner.join('\n').match(new RegExp(`https?://${named.replaceAll('.', '\\.')}:(\\d+)`));
        if (match) resolve(Number(match[1]));
        else reject(new Error(`no URL in the banner:\n${banner.join('\n')}`));
      }
    });
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return {
    port: bound,
    dir: home,
    config,
    certs,
    url: `${tls === 'off' ? 'http' : 'https'}://${acme ? named : host === '127.0.0.1' ? 'localhost' : host}:${bound}/`,
    log,
    /** SIGTERM, as Heroku or systemd would; resolves with the exit status. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Whether Debian's redis-server is installed. */
export function haveRedis() {
  return spawnSync('redis-server', ['--version']).status === 0;
}

/** A loopback port that was free a moment ago, for a server that must know it in advance. */
export async function freePort() {
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** Answers PING with +PONG on `port`. */
function pong(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => socket.write('PING\r\n'));
    socket.setTimeout(1000, () => { socket.destroy(); resolve(false); });
    socket.once('data', (data) => { socket.destroy(); resolve(data.toString().startsWith('+PONG')); });
    socket.once('error', () => resolve(false));
  });
}

/** A real redis-server on a free loopback port, with nothing saved; stopped by its PID. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const deadline = Date.now() + 10000;
  while (!(await pong(port))) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`redis-server did not start on port ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Whether Debian's nginx is installed. */
export function haveNginx() {
  return spawnSync('nginx', ['-v']).status === 0;
}

/** docs/deployment.md's nginx example, as a reader copies it, with the lines a reader edits edited. */
function readmeNginx({ port, cert, key, upstream }) {
  const docs = readFileSync(join(repo, 'docs', 'deployment.md'), 'utf8');
  const section = docs.split('## Behind a reverse proxy')[1] ?? '';
  const block = section.split('```nginx\n')[1]?.split('```')[0];
  if (!block) throw new Error('docs/deployment.md has no nginx block under "Behind a reverse proxy"');
  const edits = [
    ['listen 443 ssl;', `listen 127.0.0.1:${port} ssl;`],
    ['/etc/letsencrypt/live/calls.example.com/fullchain.pem', cert],
    ['/etc/letsencrypt/live/calls.example.com/privkey.pem', key],
    ['proxy_pass http://127.0.0.1:8080;', `proxy_pass http://127.0.0.1:${upstream};`],
  ];
  return edits.reduce((text, [from, to]) => {
    if (!text.includes(from)) throw new Error(`the documented nginx block has no ${JSON.stringify(from)}`);
    return text.replace(from, to);
  }, block);
}

/**
 * A real nginx terminating TLS with the suite's certificate (so the browsers trust it) in
 * front of dialtone on `upstream`, configured with docs/deployment.md's example; its config, log and
 * PID in a temporary folder, stopped by its PID.
 */
export async function startNginx(upstream) {
  await suiteCertificate();
  const home = mkdtempSync(join(tmpdir(), 'dialtone-e2e-nginx-'));
  const port = await freePort();
  const server = readmeNginx({ port, cert: join(suiteCerts, 'cert.pem'), key: join(suiteCerts, 'key.pem'), upstream });
  const temp = (name) => `${name}_temp_path ${join(home, name)};`;
  writeFileSync(join(home, 'nginx.conf'), [
    'daemon off;', 'worker_processes 1;', `pid ${join(home, 'nginx.pid')};`, `error_log ${join(home, 'error.log')} info;`,
    'events {}', 'http {', 'access_log off;', 'proxy_max_temp_file_size 0;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(temp), server, '}', '',
  ].join('\n'));
  const child = spawn('nginx', ['-p', home, '-e', join(home, 'error.log'), '-c', join(home, 'nginx.conf')], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const deadline = Date.now() + 10000;
  while (!(await accepts(port))) {
    if (Date.now() > deadline || child.exitCode !== null) {
      throw new Error(`nginx did not start on port ${port}:\n${readFileSync(join(home, 'error.log'), 'utf8')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    port,
    url: `https://localhost:${port}/`,
    /** SIGTERM: nginx's fast shutdown, which stops its workers too. */
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Whether something accepts TCP connections on loopback `port`. */
function accepts(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => { socket.destroy(); resolve(true); });
    socket.setTimeout(1000, () => { socket.destroy(); resolve(false); });
    socket.once('error', () => resolve(false));
  });
}

const flags = [
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--no-sandbox',
];

/**
 * The base64 SHA-256 of a certificate's public key (its SPKI), as Chromium's
 * --ignore-certificate-errors-spki-list wants it.
 */
export function spkiHash(certPem) {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

/**
 * The SPKI hash of the certificate the suite's servers present, made by a first start of
 * dialtone if there is none yet. The browsers accept that certificate and no other, as a
 * person does who compared the fingerprint once and accepted the warning.
 */
export async function suiteCertificate() {
  const pem = join(suiteCerts, 'cert.pem');
  if (!existsSync(pem)) {
    const first = await startServer();
    await first.stop();
  }
  return spkiHash(readFileSync(pem));
}

/**
 * A browser process of its own (so its fake camera is its own) that trusts the certificate
 * with SPKI hash `trusted` and checks every other one as usual.
 */
export async function launchBrowser(trusted, { netns, args: extra = [] } = {}) {
  const args = [...flags, `--ignore-certificate-errors-spki-list=${trusted}`, ...extra];
  return chromium.launch({ executablePath: netns ? inNamespace(netns, executablePath) : executablePath, args, headless: true });
}

/**
 * An executable that runs `program` inside network namespace `ns`, with the arguments it is
 * given: Playwright starts "the browser" with its pipes and flags, and the browser sees only
 * that namespace's network.
 */
function inNamespace(ns, program) {
  const wrapper = join(mkdtempSync(join(tmpdir(), 'dialtone-e2e-netns-')), 'browser');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${program} "$@"\n`, { mode: 0o755 });
  return wrapper;
}

function ip(...args) {
  const run = spawnSync('ip', args, { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`ip ${args.join(' ')}: ${run.error ?? run.stderr.trim()}`);
  return run.stdout;
}

/** Why network namespaces cannot be made here (needs root and iproute2), or null. */
export function noNetns() {
  const probe = `dtprobe${process.pid}`;
  try {
    ip('netns', 'add', probe);
    ip('netns', 'del', probe);
    return null;
  } catch (err) {
    return `cannot create network namespaces (run as root, apt-get install iproute2): ${err.message}`;
  }
}

/** The relay's address as both sides reach it. */
export const RELAY_IP = '10.77.1.1';

/**
 * Three network namespaces, as in tests/common/netns.rs: `relay` (where dialtone runs), and
 * `a` and `b`, each with one veth link to the relay's namespace and nothing else. `b` has one
 * route, to 10.77.1.1; there is no route between `a` and `b`, and the relay's namespace does
 * not forward, so whatever passes between the two browsers goes through dialtone.
 *
 *   a 10.77.1.2 ── veth ── 10.77.1.1 relay 10.77.2.1 ── veth ── 10.77.2.2 b
 */
/**
 * Drops every UDP packet in and out of namespace `ns` (but on loopback), as an office or hotel
 * network that lets only TCP through; the returned function lifts the block.
 */
export function blockUdp(ns) {
  const nft = (...rule) => {
    const done = spawnSync('ip', ['netns', 'exec', ns, 'nft', ...rule]);
    if (done.status !== 0) throw new Error(`nft ${rule.join(' ')} in ${ns}: ${done.stderr}`);
  };
  nft('add', 'table', 'inet', 'dtblock');
  for (const [chain, hook, side] of [['in', 'input', 'iifname'], ['out', 'output', 'oifname']]) {
    nft('add', 'chain', 'inet', 'dtblock', chain, `{ type filter hook ${hook} priority 0; policy accept; }`);
    nft('add', 'rule', 'inet', 'dtblock', chain, side, '!=', 'lo', 'meta', 'l4proto', 'udp', 'counter', 'drop');
  }
  return () => spawnSync('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'dtblock']);
}

/** UDP packets namespace `ns`'s block has dropped (see blockUdp). */
export function udpDropped(ns) {
  const listed = spawnSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'inet', 'dtblock']);
  return [...String(listed.stdout).matchAll(/packets (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
}

export function createTopology() {
  const tag = `${process.pid}x${Date.now() % 100000}`;
  const names = { relay: `dtr${tag}`, a: `dta${tag}`, b: `dtb${tag}` };
  const remove = () => {
    for (const ns of Object.values(names)) spawnSync('ip', ['netns', 'del', ns]);
  };
  try {
    for (const ns of Object.values(names)) {
      ip('netns', 'add', ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    const short = tag.slice(-8);
    for (const [side, relayIp, sideIp] of [['a', '10.77.1.1/24', '10.77.1.2/24'], ['b', '10.77.2.1/24', '10.77.2.2/24']]) {
      const outer = `r${side}${short}`;
      const inner = `s${side}${short}`;
      ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner);
      ip('link', 'set', outer, 'netns', names.relay);
      ip('link', 'set', inner, 'netns', names[side]);
      ip('-n', names.relay, 'addr', 'add', relayIp, 'dev', outer);
      ip('-n', names[side], 'addr', 'add', sideIp, 'dev', inner);
      ip('-n', names.relay, 'link', 'set', outer, 'up');
      ip('-n', names[side], 'link', 'set', inner, 'up');
    }
    ip('-n', names.b, 'route', 'add', '10.77.1.1/32', 'via', '10.77.2.1');
    const forward = spawnSync('ip', ['netns', 'exec', names.relay, 'sysctl', '-qw', 'net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0']);
    if (forward.status !== 0) throw new Error(`cannot turn forwarding off in ${names.relay}: ${forward.stderr}`);
  } catch (err) {
    remove();
    throw err;
  }
  return {
    ...names,
    /** Whether namespace `ns` has a route to `to`. */
    routes: (ns, to) => spawnSync('ip', ['-n', ns, 'route', 'get', to]).status === 0,
    remove,
  };
}

/**
 * Opens the page for one person. Every RTCPeerConnection the page makes is recorded in
 * `window.__pcs`, so tests can read its state and stats without the page exposing anything.
 */
export async function openPage(browser, server, { viewport = { width: 1000, height: 800 }, hasTouch = false, rtc, keepUrls, overTls, path = '' } = {}) {
  const context = await browser.newContext({
    permissions: ['camera', 'microphone'],
    viewport,
    hasTouch,
  });
  await context.addInitScript(({ rtc, keepUrls, overTls }) => {
    // The page's signaling sockets too, so a test can drop one from inside the page.
    const NativeSocket = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends NativeSocket {
      constructor(...args) {
        super(...args);
        window.__sockets.push(this);
      }
    };
    const Native = window.RTCPeerConnection;
    window.__pcs = [];
    // `keepUrls`: only the ICE server URLs the login handed out that contain this text;
    // `overTls`: as turns: (the login hands that out only with a certificate browsers trust for
    // a host name, and a test's is trusted by its SPKI hash, for an IP address).
    const keep = (servers) => (servers ?? [])
      .map((server) => ({
        ...server,
        urls: [server.urls].flat().filter((url) => url.includes(keepUrls)).map((url) => (overTls ? url.replace(/^turn:/, 'turns:') : url)),
      }))
      .filter((server) => server.urls.length > 0);
    window.RTCPeerConnection = class extends Native {
      // `rtc` is laid over the page's own configuration: a test can force relaying on one side.
      constructor(config, ...rest) {
        let mine = rtc ? { ...config, ...rtc } : config;
        if (keepUrls) mine = { ...mine, iceServers: keep(mine?.iceServers) };
        super(mine, ...rest);
        window.__pcs.push(this);
      }
    };
  }, { rtc, keepUrls, overTls });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  // Chromium aborts a load with ERR_NETWORK_CHANGED when its interfaces change under it: in a
  // network namespace made a moment ago, the new veth's IPv6 address can still be settling.
  // That is the test machine's network starting, not dialtone: load again, a few times.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(server.url + path);
      break;
    } catch (err) {
      if (attempt >= 5 || !String(err).includes('ERR_NETWORK_CHANGED')) throw err;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  return page;
}

export async function state(page) {
  return page.$eval('#status', (el) => el.dataset.state);
}

export async function statusText(page) {
  return page.$eval('#status', (el) => el.textContent);
}

/** Waits until `#status` has `data-state` = `wanted` (and, if given, text containing `text`). */
export async function waitFor(page, wanted, text = '', timeout = 15000) {
  try {
    await page.waitForFunction(([s, t]) => {
      const el = document.querySelector('#status');
      return el.dataset.state === s && el.textContent.includes(t);
    }, [wanted, text], { timeout });
  } catch (err) {
    const now = `${await state(page)}: ${await statusText(page)}`;
    throw new Error(`waited for ${wanted} "${text}", status is ${now}`, { cause: err });
  }
}

export async function login(page, name) {
  await waitFor(page, 'logged-out');
  await page.fill('input#username', name);
  await page.click('button#login');
  await waitFor(page, 'idle', `Logged in as ${name}.`);
}

/** Runs the dialtone binary with `args` (and `input` on stdin); its stdout, or it throws. */
export function runDialtone(args, input) {
  const run = spawnSync(binary, args, { input, encoding: 'utf8', timeout: 20000 });
  if (run.status !== 0) throw new Error(`dialtone ${args.join(' ')} failed: ${run.stderr}`);
  return run.stdout.trim();
}

export async function call(page, name) {
  await page.fill('input#username-to-call', name);
  await page.click('button#call');
}

/** The newest peer connection's state and inbound video frame count. */
export async function media(page) {
  return page.evaluate(async () => {
    const pc = window.__pcs.at(-1);
    if (!pc) return { connection: 'none', framesDecoded: 0 };
    let framesDecoded = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') framesDecoded = report.framesDecoded ?? 0;
    });
    const remote = document.querySelector('video#remote');
    return {
      connection: pc.connectionState,
      framesDecoded,
      remoteWidth: remote.videoWidth,
      remoteAttached: remote.srcObject !== null,
    };
  });
}

/** Waits until the page sees the other person: connected, a picture, frames still coming. */
export async function expectMediaFlowing(page) {
  await page.waitForFunction(() => window.__pcs.at(-1)?.connectionState === 'connected', null, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector('video#remote').videoWidth > 0, null, { timeout: 15000 });
  // The stats may lag the picture by a moment (seen on a loaded machine: a 640 px picture
  // with 0 frames counted yet): wait for the first counted frame, then require more.
  const deadline = Date.now() + 15000;
  let first = await media(page);
  while (first.framesDecoded === 0 && Date.now() < deadline) {
    await page.waitForTimeout(100);
    first = await media(page);
  }
  await page.waitForTimeout(1000);
  const second = await media(page);
  if (!(first.framesDecoded > 0 && second.framesDecoded > first.framesDecoded)) {
    throw new Error(`video frames are not flowing: ${JSON.stringify({ first, second })}`);
  }
  return second;
}

/**
 * The candidate pair the newest peer connection sends on: each end's type (host, srflx,
 * relay) and address, as its stats report them.
 */
export async function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.__pcs.at(-1).getStats();
    const reports = [...stats.values()];
    const transport = reports.find((r) => r.type === 'transport' && r.selectedCandidatePairId);
    const pair = transport ? stats.get(transport.selectedCandidatePairId) : reports.find((r) => r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded');
    if (!pair) return null;
    const end = (id) => {
      const c = stats.get(id);
      // relayProtocol: how this side reaches its TURN server (udp, tcp or tls); url: which one.
      return { type: c.candidateType, address: `${c.address}:${c.port}`, relayProtocol: c.relayProtocol, url: c.url };
    };
    return { local: end(pair.localCandidateId), remote: end(pair.remoteCandidateId) };
  });
}

/** Inbound video frames decoded so far by the newest peer connection. */
export async function framesDecoded(page) {
  return (await media(page)).framesDecoded;
}

/** Waits until the page has torn its call down. */
export async function expectTornDown(page) {
  await page.waitForFunction(() => {
    const pc = window.__pcs.at(-1);
    return (!pc || pc.connectionState === 'closed') && document.querySelector('video#remote').srcObject === null;
  }, null, { timeout: 15000 });
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
}

/**
 * What every browser suite stands on, with node:test's hooks: two browser processes that
 * trust the suite's certificate and no other (no ignoreHTTPSErrors), the servers a suite
 * starts (stopped at its end), and the pages each test opens, closed after it: open pages
 * keep their fake cameras and calls running, and on a small machine they slow the later
 * tests down.
 */
export function browserSuite({ before, after, afterEach }) {
  const suite = {
    browsers: [],
    servers: [],
    opened: [],
    async start(options) {
      const server = await startServer(options);
      suite.servers.push(server);
      return server;
    },
    async open(browser, server, options) {
      const page = await openPage(browser, server, options);
      suite.opened.push(page);
      return page;
    },
  };
  before(async () => {
    const trusted = await suiteCertificate();
    suite.browsers = await Promise.all([launchBrowser(trusted), launchBrowser(trusted)]);
  });
  afterEach(async () => {
    await Promise.all(suite.opened.map((page) => page.context().close().catch(() => {})));
    suite.opened = [];
  });
  after(async () => {
    await Promise.all(suite.browsers.map((b) => b.close()));
    await Promise.all(suite.servers.map((s) => s.stop()));
  });
  return suite;
}
