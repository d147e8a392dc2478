// `[tls] mode = "acme"` as a person meets it: dialtone gets its certificate from Pebble (an
// ACME server for testing clients, which validates for real over TLS-ALPN-01), and Chromium,
// trusting Pebble's issuing CA by its SPKI hash as the other tests trust dialtone's own
// certificate,
// opens https://calls.test:PORT (mapped to 127.0.0.1) and makes a call. A browser that does
// not trust Pebble's CA is refused: the chain is really checked.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:https';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  call, expectMediaFlowing, freePort, launchBrowser, login, missing, openPage, screenshot, spkiHash,
  startServer, waitFor,
} from './harness.mjs';

const havePebble = ['pebble', 'pebble-challtestsrv', 'openssl']
  .every((program) => spawnSync(program, program === 'openssl' ? ['version'] : ['-h']).status === 0);
const why = missing() ?? (havePebble ? null : 'no pebble or openssl (apt-get install pebble openssl)');
if (why && process.env.CI === 'true') {
  throw new Error(`the ACME browser test cannot run: ${why}`);
}

async function waitForPort(port, what) {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port }, () => { socket.end(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${what} did not listen on ${port}`);
}

function openssl(...args) {
  const run = spawnSync('openssl', args, { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${run.stderr}`);
}

/**
 * Pebble and its DNS on free loopback ports, validating on `tlsPort`. Pebble's own HTTPS
 * certificate comes from a CA made here (`caFile`), which dialtone trusts through
 * SSL_CERT_FILE, as a private CA is trusted.
 */
async function startPebble(tlsPort) {
  const dir = mkdtempSync(join(tmpdir(), 'dialtone-e2e-pebble-'));
  const at = (name) => join(dir, name);
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', at('ca.key'), '-out', at('ca.pem'), '-days', '2', '-subj', '/CN=e2e private CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', at('https.key'), '-out', at('https.csr'), '-subj', '/CN=127.0.0.1');
  writeFileSync(at('ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl('x509', '-req', '-in', at('https.csr'), '-CA', at('ca.pem'), '-CAkey', at('ca.key'),
    '-CAcreateserial', '-out', at('https.pem'), '-days', '1', '-extfile', at('ext'));
  // One after another: a port closed by one probe could be handed to the next running beside it.
  const ports = [];
  while (ports.length < 5) {
    const port = await freePort();
    if (port !== tlsPort && !ports.includes(port)) ports.push(port);
  }
  const [acme, management, dns, dnsManagement, http] = ports;
  writeFileSync(at('pebble.json'), JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${acme}`,
      managementListenAddress: `127.0.0.1:${management}`,
      certificate: at('https.pem'),
      privateKey: at('https.key'),
      httpPort: http,
      tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
    },
  }));
  const children = [
    spawn('pebble-challtestsrv', ['-dns01', `127.0.0.1:${dns}`, '-http01', '', '-https01', '',
      '-tlsalpn01', '', '-management', `127.0.0.1:${dnsManagement}`, '-defaultIPv4', '127.0.0.1',
      '-defaultIPv6', ''], { stdio: 'ignore' }),
  ];
  await waitForPort(dnsManagement, 'pebble-challtestsrv');
  children.push(spawn('pebble', ['-config', at('pebble.json'), '-dnsserver', `127.0.0.1:${dns}`], {
    stdio: 'ignore',
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' },
  }));
  await waitForPort(acme, 'pebble');
  return {
    directory: `https://127.0.0.1:${acme}/dir`,
    caFile: at('ca.pem'),
    /**
     * Pebble's issuing CA (made anew at each start), from its management port: `roots/0` or
     * `intermediates/0`.
     */
    ca: (which) => new Promise((resolve, reject) => {
      get(`https://127.0.0.1:${management}/${which}/0`, { ca: readFileSync(at('ca.pem')) }, (response) => {
        let body = '';
        response.on('data', (chunk) => { body += chunk; });
        response.on('end', () => resolve(body));
      }).on('error', reject);
    }),
    stop: () => children.forEach((child) => child.kill()),
  };
}

describe('an ACME certificate in a real browser', { skip: why ?? false, timeout: 120000 }, () => {
  let pebble;
  let server;
  const browsers = [];
  const pages = [];
  after(async () => {
    await Promise.all(pages.map((page) => page.context().close().catch(() => {})));
    await Promise.all(browsers.map((browser) => browser.close()));
    await server?.stop();
    pebble?.stop();
  });

  before(async () => {
    const port = await freePort();
    pebble = await startPebble(port);
    server = await startServer({
      port,
      tls: 'acme',
      acme: { domains: ['calls.test'], directory: pebble.directory, cache: join(mkdtempSync(join(tmpdir(), 'dialtone-e2e-acme-')), 'acme') },
      env: { SSL_CERT_FILE: pebble.caFile },
    });
  });

  test('Chromium opens https://calls.test with the certificate Pebble issued, and alice calls bob', { timeout: 60000 }, async () => {
    assert.match(server.url, /^https:\/\/calls\.test:\d+\/$/);
    const resolve = '--host-resolver-rules=MAP calls.test 127.0.0.1';
    // Chromium matches --ignore-certificate-errors-spki-list against the certificates the
    // server presents: the leaf and Pebble's intermediate, never the root (which no server
    // sends). Trusting the intermediate's key is trusting Pebble's CA.
    const trusted = spkiHash(await pebble.ca('intermediates'));
    for (let i = 0; i < 2; i++) browsers.push(await launchBrowser(trusted, { args: [resolve] }));
    const [alice, bob] = [await openPage(browsers[0], server), await openPage(browsers[1], server)];
    pages.push(alice, bob);
    for (const page of [alice, bob]) {
      assert.equal(await page.evaluate(() => window.isSecureContext), true);
    }
    await login(alice, 'alice');
    await login(bob, 'bob');
    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#accept-call');
    await Promise.all([expectMediaFlowing(alice), expectMediaFlowing(bob)]);
    await screenshot(alice, 'acme-in-call-alice');
    await alice.click('button#close-call');
    await waitFor(bob, 'idle', 'alice hung up.');

    // A browser that trusts another key, not Pebble's CA, refuses the page.
    const stranger = await launchBrowser(spkiHash(readFileSync(pebble.caFile)), { args: [resolve] });
    browsers.push(stranger);
    const context = await stranger.newContext();
    const page = await context.newPage();
    await assert.rejects(page.goto(server.url), /ERR_CERT_AUTHORITY_INVALID/);
  });
});
