// Two browsers that cannot reach each other call through dialtone's built-in TURN relay. Each
// Chromium runs in a network namespace of its own whose only link goes to the namespace where
// dialtone runs (see createTopology in harness.mjs): without the relay no call can connect,
// which the second test checks, so the first one's video can only have come through it.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  RELAY_IP, blockUdp, call, createTopology, expectMediaFlowing, expectTornDown, launchBrowser, login, missing, noNetns,
  openPage, screenshot, selectedPair, spkiHash, startServer, statusText, udpDropped, waitFor,
} from './harness.mjs';

// The UDP block (blockUdp) is an nftables rule inside each side's namespace.
const noNft = () => (spawnSync('nft', ['--version']).status === 0 ? null : 'nft is missing (apt-get install nftables)');
const why = missing() ?? noNetns() ?? noNft();
if (why && process.env.CI === 'true') {
  throw new Error(`the relay's browser tests cannot run: ${why}`);
}

/** One Prometheus figure from the page's own origin's /metrics. */
async function figure(page, series) {
  const text = await page.evaluate(() => fetch('/metrics').then((r) => r.text()));
  const line = text.split('\n').find((l) => l.startsWith(`${series} `) || l.startsWith(`${series}{`));
  assert.ok(line, `no ${series} in /metrics`);
  return Number(line.split(' ').at(-1));
}

/**
 * Waits (up to `patience` ms) until both pages of a call that never connected have given up:
 * one ICE restart each, then the call ends with `reason: failed`, and both say so, never
 * "hung up".
 */
async function expectNeverConnected(alice, bob, patience) {
  await Promise.all([alice, bob].map((page) => waitFor(page, 'idle', 'failed', patience)));
  assert.match(await statusText(alice), /The connection to bob failed: the call ended\./);
  assert.match(await statusText(bob), /The connection to alice failed: the call ended\./);
  for (const page of [alice, bob]) {
    const seen = await page.evaluate(() => window.__pcs.map((pc) => pc.connectionState));
    assert.ok(!seen.includes('connected'), JSON.stringify(seen));
  }
}

describe('calls between namespaces that reach only dialtone', { skip: why ?? false, timeout: 300000 }, () => {
  let net;
  let browsers = {};
  let certs;
  let servers = [];
  let opened = [];

  /** dialtone in the relay's namespace, listening on the address both sides reach. */
  async function start(turnServer) {
    const server = await startServer({ netns: net.relay, host: RELAY_IP, certs, turnServer });
    servers.push(server);
    return server;
  }

  const relayOn = (extra = {}) => ({ enabled: true, listen: `${RELAY_IP}:3478`, relay_ports: '50000-50100', ...extra });

  async function person(side, server, name, options) {
    const page = await openPage(browsers[side], server, options);
    opened.push(page);
    try {
      await login(page, name);
    } catch (err) {
      const console = await page.evaluate(() => JSON.stringify(window.__sockets.map((s) => [s.url, s.readyState])));
      throw new Error(`${err.message}\nsockets: ${console}\nserver log:\n${server.log.slice(-30).join('\n')}`, { cause: err });
    }
    return page;
  }

  before(async () => {
    net = createTopology();
    certs = mkdtempSync(join(tmpdir(), 'dialtone-e2e-relay-certs-'));
    // The first start makes the certificate the browsers trust; it names 10.77.1.1.
    const first = await startServer({ netns: net.relay, host: RELAY_IP, certs });
    await first.stop();
    const trusted = spkiHash(readFileSync(join(certs, 'cert.pem')));
    browsers = {
      a: await launchBrowser(trusted, { netns: net.a }),
      b: await launchBrowser(trusted, { netns: net.b }),
    };
  });
  let unblock = [];
  afterEach(async () => {
    for (const lift of unblock) lift();
    unblock = [];
    await Promise.all(opened.map((page) => page.context().close().catch(() => {})));
    opened = [];
    // Every server binds the same UDP port for its relay; the next test's needs it free.
    await Promise.all(servers.map((s) => s.stop()));
    servers = [];
  });
  after(async () => {
    await Promise.all(Object.values(browsers).map((b) => b.close()));
    await Promise.all(servers.map((s) => s.stop()));
    net?.remove();
  });

  test('the two sides have no route to each other, and the relay does not forward', () => {
    assert.equal(net.routes(net.a, '10.77.2.2'), false);
    assert.equal(net.routes(net.b, '10.77.1.2'), false);
    assert.equal(net.routes(net.a, RELAY_IP), true);
    assert.equal(net.routes(net.b, RELAY_IP), true);
  });

  test('alice and bob call through the relay: video both ways, relayed on both sides', { timeout: 60000 }, async () => {
    const server = await start(relayOn());
    const alice = await person('a', server, 'alice');
    const bob = await person('b', server, 'bob');
    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#accept-call');
    await Promise.all([expectMediaFlowing(alice), expectMediaFlowing(bob)]);
    await waitFor(alice, 'in-call', 'In a call with bob.');
    await screenshot(alice, 'relayed-alice');
    await screenshot(bob, 'relayed-bob');

    for (const page of [alice, bob]) {
      const pair = await selectedPair(page);
      assert.equal(pair?.local.type, 'relay', JSON.stringify(pair));
      assert.ok(pair.local.address.startsWith(`${RELAY_IP}:`), JSON.stringify(pair));
    }
    assert.ok(await figure(alice, 'dialtone_turn_allocations') >= 2);
    assert.ok(await figure(alice, 'dialtone_turn_relayed_packets_total') > 100);
    // Each side asked to reach the other's own address too; relay-only refused it.
    assert.ok(await figure(alice, 'dialtone_turn_peers_denied_total') > 0);

    await alice.click('button#close-call');
    await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
    await waitFor(bob, 'idle', 'alice hung up.');
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  test('the same call with the relay off never connects (the negative control)', { timeout: 90000 }, async () => {
    const server = await start();
    const alice = await person('a', server, 'alice');
    const bob = await person('b', server, 'bob');
    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#accept-call');
    await expectNeverConnected(alice, bob, 75000);
  });

  test("only alice is forced to relay (iceTransportPolicy 'relay'): the call connects", { timeout: 60000 }, async () => {
    const server = await start(relayOn({ peers: 'lan' }));
    const alice = await person('a', server, 'alice', { rtc: { iceTransportPolicy: 'relay' } });
    const bob = await person('b', server, 'bob');
    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#accept-call');
    await Promise.all([expectMediaFlowing(alice), expectMediaFlowing(bob)]);
    // Alice relays through the address she was handed; bob, free to use his own address,
    // reaches her relayed one directly. A wrong external_ip breaks exactly this pair.
    const forced = await selectedPair(alice);
    const free = await selectedPair(bob);
    assert.equal(forced?.local.type, 'relay', JSON.stringify(forced));
    assert.ok(forced.local.address.startsWith(`${RELAY_IP}:`), JSON.stringify(forced));
    assert.equal(free?.local.type, 'host', JSON.stringify(free));
    assert.equal(free.remote.address, forced.local.address, JSON.stringify({ forced, free }));
    await alice.click('button#close-call');
    await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  test('with all UDP dropped on both sides, calls connect over TCP and over TLS to the page\'s own port', { timeout: 90000 }, async () => {
    const server = await start(relayOn());
    unblock = [blockUdp(net.a), blockUdp(net.b)];
    // Each side keeps only the relay URL on the page's port: as handed out (TCP in the clear,
    // what a self-signed certificate gets), then as turns: (TLS on the same port).
    const port = new URL(server.url).port;
    const only = `${RELAY_IP}:${port}?transport=tcp`;
    for (const [overTls, protocol, scheme, one, two] of [[false, 'tcp', 'turn', 'alice', 'bob'], [true, 'tls', 'turns', 'carol', 'dave']]) {
      const options = { rtc: { iceTransportPolicy: 'relay' }, keepUrls: only, overTls };
      const alice = await person('a', server, one, options);
      const bob = await person('b', server, two, options);
      await call(alice, two);
      await waitFor(bob, 'ringing', `${one} is calling you.`);
      await bob.click('button#accept-call');
      await Promise.all([expectMediaFlowing(alice), expectMediaFlowing(bob)]);
      await screenshot(alice, `${protocol}-relayed-alice`);
      for (const page of [alice, bob]) {
        const pair = await selectedPair(page);
        assert.equal(pair?.local.type, 'relay', JSON.stringify(pair));
        assert.equal(pair.local.relayProtocol, protocol, JSON.stringify(pair));
        assert.equal(pair.local.url, `${scheme}:${only}`, JSON.stringify(pair));
        const handed = await page.evaluate(() => window.__pcs.at(-1).getConfiguration().iceServers.flatMap((s) => [s.urls].flat()));
        assert.deepEqual(handed, [`${scheme}:${only}`], JSON.stringify(handed));
      }
      assert.ok(await figure(alice, `dialtone_turn_allocations{transport="${protocol}"}`) >= 2);
      assert.ok(await figure(alice, `dialtone_turn_relayed_packets_total{transport="${protocol}"}`) > 100);
      // The same port goes on serving the page and the signaling during the call.
      const health = await bob.evaluate(() => fetch('/healthz').then((r) => r.status));
      assert.equal(health, 200);
      await alice.click('button#close-call');
      await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
      await waitFor(bob, 'idle', `${one} hung up.`);
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      await Promise.all([alice, bob].map((page) => page.context().close()));
    }
  });

  test('with all UDP dropped and the relay serving UDP only, the call never connects (the negative control)', { timeout: 120000 }, async () => {
    const server = await start(relayOn({ transports: ['udp'] }));
    unblock = [blockUdp(net.a), blockUdp(net.b)];
    const options = { rtc: { iceTransportPolicy: 'relay' } };
    const alice = await person('a', server, 'alice', options);
    const bob = await person('b', server, 'bob', options);
    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#accept-call');
    await expectNeverConnected(alice, bob, 100000);
    for (const page of [alice, bob]) {
      // What they had to try: the relay over UDP only.
      const handed = await page.evaluate(() => window.__pcs[0].getConfiguration().iceServers.flatMap((s) => [s.urls].flat()));
      assert.ok(handed.length > 0 && handed.every((url) => !url.includes('transport=tcp')), JSON.stringify(handed));
    }
    // The block was real: both browsers tried the relay over UDP and it went nowhere.
    assert.ok(udpDropped(net.a) > 0 && udpDropped(net.b) > 0, `${udpDropped(net.a)} / ${udpDropped(net.b)}`);
  });
});
