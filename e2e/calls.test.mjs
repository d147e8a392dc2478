// Two (or three) people call each other through the real dialtone binary, in real Chromium
// processes with fake cameras. Screenshots land in target/e2e-artifacts/.

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  browserSuite, call, expectMediaFlowing, expectTornDown, framesDecoded, haveNginx, haveRedis, login,
  missing, screenshot, startNginx, startRedis, startServer, state, statusText, waitFor,
} from './harness.mjs';

const why = missing();
if (why && process.env.CI === 'true') {
  throw new Error(`the end-to-end tests cannot run: ${why}`);
}
const noRedis = haveRedis() ? null : 'no redis-server (apt-get install redis-server)';
if (noRedis && process.env.CI === 'true') {
  throw new Error(`the cluster test cannot run: ${noRedis}`);
}
const noNginx = haveNginx() ? null : 'no nginx (apt-get install nginx)';
if (noNginx && process.env.CI === 'true') {
  throw new Error(`the reverse-proxy test cannot run: ${noNginx}`);
}

describe('calls in real browsers', { skip: why ?? false, timeout: 300000 }, () => {
  // One browser process per person whose picture matters; carol shares alice's process.
  const suite = browserSuite({ before, after, afterEach });
  const { servers } = suite;
  const start = suite.start;
  const open = (browser, server) => suite.open(browser, server);
  let browsers = [];
  before(() => { browsers = suite.browsers; });

  async function people(server, ...names) {
    const pages = [];
    for (const [i, name] of names.entries()) {
      const page = await open(browsers[i % browsers.length], server);
      await login(page, name);
      pages.push(page);
    }
    return pages;
  }

  async function connect(caller, callee, calleeName, callerName) {
    await call(caller, calleeName);
    await waitFor(caller, 'calling', `Calling ${calleeName}`);
    await waitFor(callee, 'ringing', `${callerName} is calling you.`);
    assert.equal(await callee.isVisible('button#accept-call'), true);
    assert.equal(await callee.isVisible('button#decline-call'), true);
    await callee.click('button#accept-call');
    await waitFor(caller, 'in-call', `In a call with ${calleeName}.`);
    await waitFor(callee, 'in-call', `In a call with ${callerName}.`);
    await Promise.all([expectMediaFlowing(caller), expectMediaFlowing(callee)]);
    // Not ringing any more: the buttons are hidden, not merely disabled.
    assert.equal(await callee.isVisible('button#accept-call'), false);
  }

  test('alice calls bob, both see each other, hang up, and call again', { timeout: 30000 }, async () => {
    const server = await start();
    const [alice, bob] = await people(server, 'alice', 'bob');
    assert.equal(await alice.isVisible('button#accept-call'), false, 'accept is hidden until a call rings');

    await connect(alice, bob, 'bob', 'alice');
    await screenshot(alice, 'in-call-alice');
    await screenshot(bob, 'in-call-bob');

    await alice.click('button#close-call');
    await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
    await waitFor(alice, 'idle', 'You hung up.');
    await waitFor(bob, 'idle', 'alice hung up.');
    // The local preview stays.
    assert.equal(await alice.$eval('video#local', (v) => v.srcObject !== null), true);

    // A second call without reloading, the other way round.
    await connect(bob, alice, 'alice', 'bob');
    await bob.click('button#close-call');
    await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
    await waitFor(alice, 'idle', 'bob hung up.');
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  test('declined, busy, and unknown names end as sentences in #status', { timeout: 30000 }, async () => {
    const server = await start();
    const [alice, bob, carol] = await people(server, 'alice', 'bob', 'carol');

    await call(alice, 'bob');
    await waitFor(bob, 'ringing', 'alice is calling you.');
    await bob.click('button#decline-call');
    await waitFor(alice, 'idle', 'bob declined the call.');
    await waitFor(bob, 'idle', "You declined alice's call.");
    await expectTornDown(alice);

    await connect(alice, bob, 'bob', 'alice');
    await call(carol, 'alice');
    await waitFor(carol, 'idle', 'alice is busy.');
    // The call in progress is untouched.
    assert.equal(await state(alice), 'in-call');
    await expectMediaFlowing(bob);

    await call(carol, 'zed');
    await waitFor(carol, 'idle', 'No user named zed is logged in.');
    assert.deepEqual([...alice.errors, ...bob.errors, ...carol.errors], []);
  });

  test("bob's page closes mid-call and never comes back: alice is told after the grace period, not before", { timeout: 30000 }, async () => {
    const server = await start({ grace: 4 });
    const [alice, bob] = await people(server, 'alice', 'bob');
    await connect(alice, bob, 'bob', 'alice');
    const closed = Date.now();
    await bob.context().close();
    // Within the 4 s grace alice still sees the call…
    await alice.waitForTimeout(2500);
    assert.equal(await state(alice), 'in-call', await statusText(alice));
    // …then the usual sentence.
    await waitFor(alice, 'idle', 'Connection to bob lost: the call ended.');
    const told = Date.now() - closed;
    assert.ok(told >= 4000, `told after ${told} ms, inside the grace period`);
    await expectTornDown(alice);
  });

  test("a page's signaling socket drops mid-call: it takes its name back with its token, and the call goes on", { timeout: 30000 }, async () => {
    const server = await start();
    const [alice, bob] = await people(server, 'alice', 'bob');
    await connect(alice, bob, 'bob', 'alice');
    const before = await framesDecoded(alice);
    // The socket object itself, not the network: the page sees its socket close.
    await alice.evaluate(() => window.__sockets.at(-1).close(3000, 'dropped by the test'));
    await waitFor(alice, 'reconnecting', 'Connection to the server lost. Reconnecting…', 5000);
    await waitFor(alice, 'in-call', 'In a call with bob.', 5000);
    assert.equal(await state(bob), 'in-call', 'bob never noticed');
    assert.equal(await alice.evaluate(() => window.__sockets.length), 2, 'one reconnect');
    await expectMediaFlowing(alice);
    assert.ok(await framesDecoded(alice) > before);
    // Signaling works on the new socket: hang-up reaches bob.
    await alice.click('button#close-call');
    await waitFor(alice, 'idle', 'You hung up.');
    await waitFor(bob, 'idle', 'alice hung up.');
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  test('both pages show the same safety code, and a new call has a new one', { timeout: 40000 }, async () => {
    const server = await start();
    const [alice, bob] = await people(server, 'alice', 'bob');
    assert.equal(await alice.isVisible('button#verify'), false, 'no Verify outside a call');
    const codes = [];
    for (const [caller, callee, calleeName, callerName] of [[alice, bob, 'bob', 'alice'], [bob, alice, 'alice', 'bob']]) {
      await connect(caller, callee, calleeName, callerName);
      const shown = [];
      for (const page of [alice, bob]) {
        await page.click('button#verify');
        await page.waitForFunction(() => document.querySelector('#safety-code').dataset.code, null, { timeout: 5000 });
        shown.push(await page.$eval('#safety-code', (el) => el.dataset.code));
        assert.match(await page.textContent('#safety-code'), /the same four words on both screens/);
      }
      assert.equal(shown[0], shown[1], 'the two pages show one code');
      assert.match(shown[0], /^[a-z]+ [a-z]+ [a-z]+ [a-z]+$/);
      codes.push(shown[0]);
      await screenshot(alice, `safety-code-${codes.length}`);
      await caller.click('button#close-call');
      await waitFor(callee, 'idle', `${callerName} hung up.`);
      assert.equal(await alice.isVisible('#safety-code'), false, 'gone with the call');
    }
    assert.notEqual(codes[0], codes[1], 'each call has its own keys, and its own code');
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  for (const reloaded of ['caller', 'callee']) {
    test(`the ${reloaded} reloads the page mid-call: back as the same name and in the same call, video both ways`, { timeout: 60000 }, async () => {
      const server = await start(); // the default 30 s grace holds the name and the call
      const [alice, bob] = await people(server, 'alice', 'bob');
      await connect(alice, bob, 'bob', 'alice');
      const [page, other, name, otherName] = reloaded === 'caller'
        ? [alice, bob, 'alice', 'bob'] : [bob, alice, 'bob', 'alice'];
      await page.reload();
      await waitFor(page, 'in-call', `In a call with ${otherName}.`, 20000);
      await waitFor(other, 'in-call', `In a call with ${name}.`, 20000);
      // A new peer connection on both sides, with pictures both ways.
      await Promise.all([expectMediaFlowing(page), expectMediaFlowing(other)]);
      assert.equal(await other.evaluate(() => window.__pcs.length), 2, 'the other page started anew');
      assert.match(await page.textContent('#whoami'), new RegExp(name));
      // Still one call to the server: the hang-up reaches the other page.
      await other.click('button#close-call');
      await waitFor(page, 'idle', `${otherName} hung up.`);
      assert.deepEqual([...alice.errors, ...bob.errors], []);
    });
  }

  test('the server restarts in the middle of a call: video keeps flowing and both pages are back in the call', { timeout: 60000 }, async () => {
    const server = await start();
    const [alice, bob] = await people(server, 'alice', 'bob');
    await connect(alice, bob, 'bob', 'alice');
    const frames = async () => Promise.all([framesDecoded(alice), framesDecoded(bob)]);
    const seen = [await frames()];
    const stopped = Date.now();
    const { code } = await server.stop();
    assert.equal(code, 0);
    await waitFor(alice, 'reconnecting', 'The server is restarting.');
    await alice.waitForTimeout(1000);
    seen.push(await frames()); // while no server runs at all
    servers.push(await startServer({ port: server.port, dir: server.dir }));
    await Promise.all([
      waitFor(alice, 'in-call', 'In a call with bob.', 15000),
      waitFor(bob, 'in-call', 'In a call with alice.', 15000),
    ]);
    const back = Date.now() - stopped;
    await alice.waitForTimeout(1000);
    seen.push(await frames());
    for (let i = 1; i < seen.length; i += 1) {
      assert.ok(seen[i][0] > seen[i - 1][0] && seen[i][1] > seen[i - 1][1], `frames stalled: ${JSON.stringify(seen)}`);
    }
    console.log(`# back in the call ${back} ms after SIGTERM (frames ${JSON.stringify(seen)})`);
    // The resumed call is an ordinary one: hang-up ends it on both sides.
    await bob.click('button#close-call');
    await waitFor(bob, 'idle', 'You hung up.');
    await waitFor(alice, 'idle', 'bob hung up.');
    await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });

  test('a server with another certificate is refused by the browser', { timeout: 30000 }, async () => {
    const server = await start({ certs: mkdtempSync(join(tmpdir(), 'dialtone-e2e-other-')) });
    const context = await browsers[0].newContext();
    const page = await context.newPage();
    await assert.rejects(page.goto(server.url), /net::ERR_CERT_/);
    await context.close();
    // The suite's own certificate still loads in the same browser.
    const own = await start();
    const [alice] = await people(own, 'alice');
    assert.equal(await state(alice), 'idle');
  });

  test('http:// typed on the https port ends on the https page, by a 308 from dialtone', { timeout: 30000 }, async () => {
    const server = await start();
    const page = await open(browsers[0], server);
    const typed = `http://127.0.0.1:${server.port}/?call=bob`;
    const response = await page.goto(typed);
    assert.equal(page.url(), `https://127.0.0.1:${server.port}/?call=bob`);
    assert.equal(response.status(), 200);
    // The browser followed dialtone's redirect (not an upgrade of its own).
    const first = response.request().redirectedFrom();
    assert.equal(first?.url(), typed);
    assert.equal((await first.response()).status(), 308);
    // The page works there: alice logs in, and the link's call is tried (nobody is bob).
    await waitFor(page, 'logged-out', 'Log in to call bob.');
    await page.fill('input#username', 'alice');
    await page.click('button#login');
    await waitFor(page, 'idle', 'No user named bob is logged in.');
    assert.equal(await page.textContent('#whoami'), 'alice');
  });

  test('a call through nginx, configured as docs/deployment.md says, with dialtone behind it in plain HTTP', { skip: noNginx ?? false, timeout: 30000 }, async () => {
    const server = await start({ tls: 'off', behindProxy: true });
    const nginx = await startNginx(server.port);
    try {
      const proxied = { ...server, url: nginx.url };
      const [alice, bob] = await people(proxied, 'alice', 'bob');
      assert.equal(alice.url(), nginx.url);
      await connect(alice, bob, 'bob', 'alice');
      await alice.click('button#close-call');
      await waitFor(bob, 'idle', 'alice hung up.');
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      // The page and the socket both came through nginx, and dialtone had nothing to warn of.
      assert.ok(server.log.some((line) => line.includes('call answered')), server.log.join('\n'));
      assert.deepEqual(server.log.filter((line) => line.includes('WARN')), []);
    } finally {
      await nginx.stop();
    }
  });

  test('alice and bob on two instances sharing one Redis see each other, and a redeploy keeps their call', { skip: noRedis ?? false, timeout: 70000 }, async () => {
    const redis = await startRedis();
    try {
      // A grace period long enough for a redeploy, short enough to wait out in a test.
      const one = await start({ cluster: { url: redis.url, id: 'one' }, grace: 8 });
      const two = await start({ cluster: { url: redis.url, id: 'two' }, grace: 8 });
      const alice = await open(browsers[0], one);
      await login(alice, 'alice');
      const bob = await open(browsers[1], two);
      await login(bob, 'bob');
      // One service: the name is taken on the other instance too.
      const impostor = await open(browsers[1], two);
      await waitFor(impostor, 'logged-out');
      await impostor.fill('input#username', 'alice');
      await impostor.click('button#login');
      await waitFor(impostor, 'logged-out', 'Login failed: the name alice is taken');
      await impostor.context().close();

      await connect(alice, bob, 'bob', 'alice');
      await screenshot(bob, 'cluster-in-call-bob');
      await bob.click('button#close-call');
      await Promise.all([expectTornDown(alice), expectTornDown(bob)]);
      await waitFor(alice, 'idle', 'bob hung up.');
      // bob's instance is redeployed (SIGTERM, then a new process at the same address)
      // mid-call: alice, on the other instance, is held for bob; bob's page logs in on the new
      // process and resumes, and the call goes on, video flowing throughout.
      await connect(bob, alice, 'alice', 'bob');
      const before = [await framesDecoded(alice), await framesDecoded(bob)];
      const { code } = await two.stop();
      assert.equal(code, 0);
      await waitFor(bob, 'reconnecting', 'The server is restarting.');
      assert.equal(await state(alice), 'in-call', await statusText(alice));
      await start({ port: two.port, dir: two.dir, cluster: { url: redis.url, id: 'two' }, grace: 8 });
      await waitFor(bob, 'in-call', 'In a call with alice.', 15000);
      assert.equal(await state(alice), 'in-call', await statusText(alice));
      const later = [await framesDecoded(alice), await framesDecoded(bob)];
      assert.ok(later[0] > before[0] && later[1] > before[1], `frames stalled: ${before} -> ${later}`);
      await alice.click('button#close-call');
      await waitFor(bob, 'idle', 'alice hung up.');
      // Stopped for good, with nobody coming back: alice is told once the grace runs out.
      await connect(bob, alice, 'alice', 'bob');
      await bob.context().close();
      await waitFor(alice, 'idle', 'Connection to bob lost: the call ended.', 15000);
      assert.deepEqual([...alice.errors, ...bob.errors], []);
    } finally {
      await redis.stop();
    }
  });

  test('the server restarts mid-session: pages log in again by themselves and can call', { timeout: 30000 }, async () => {
    const server = await start();
    const [alice, bob] = await people(server, 'alice', 'bob');
    const { code } = await server.stop();
    assert.equal(code, 0, 'SIGTERM stops dialtone cleanly');
    await waitFor(alice, 'reconnecting', 'The server is restarting.');
    // Failed attempts while the server is down keep the reason on screen.
    await alice.waitForTimeout(1500);
    assert.match(await statusText(alice), /The server is restarting\. Reconnecting/);

    // The same port and folder. The browsers check that the certificate is still the one
    // they were told to trust: a new one would fail to load.
    servers.push(await startServer({ port: server.port, dir: server.dir }));
    await waitFor(alice, 'idle', 'Logged in as alice.');
    await waitFor(bob, 'idle', 'Logged in as bob.');
    await connect(alice, bob, 'bob', 'alice');
  });
});
