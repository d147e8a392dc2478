// The call page as people use it: who's online, call links, names typed any case, logging
// out, the other side's camera, and screenshots at a phone's and a desktop's size. Real
// Chromium calls real Chromium through the real binary, as in calls.test.mjs.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  browserSuite, call, expectMediaFlowing, login, missing, screenshot, state, statusText, waitFor,
} from './harness.mjs';

const why = missing();
if (why && process.env.CI === 'true') {
  throw new Error(`the end-to-end tests cannot run: ${why}`);
}

describe('the call page', { skip: why ?? false, timeout: 300000 }, () => {
  const suite = browserSuite({ before, after, afterEach });
  const start = suite.start;
  const open = (i, server, options) => suite.open(suite.browsers[i % suite.browsers.length], server, options);

  async function person(i, server, name, options) {
    const page = await open(i, server, options);
    await login(page, name);
    return page;
  }

  /** The names in the page's presence list. */
  async function listed(page) {
    return page.$$eval('ul#online-users li[data-username]', (items) => items.map((li) => li.dataset.username));
  }

  async function listBecomes(page, names) {
    try {
      await page.waitForFunction((wanted) => {
        const got = [...document.querySelectorAll('ul#online-users li[data-username]')].map((li) => li.dataset.username);
        return JSON.stringify(got) === JSON.stringify(wanted);
      }, names, { timeout: 10000 });
    } catch (err) {
      throw new Error(`the list is ${JSON.stringify(await listed(page))}, not ${JSON.stringify(names)}`, { cause: err });
    }
  }

  async function accept(caller, callee, calleeName, callerName) {
    await waitFor(callee, 'ringing', `${callerName} is calling you.`);
    await callee.click('button#accept-call');
    await waitFor(caller, 'in-call', `In a call with ${calleeName}.`);
    await waitFor(callee, 'in-call', `In a call with ${callerName}.`);
    await Promise.all([expectMediaFlowing(caller), expectMediaFlowing(callee)]);
  }

  test("who's online: the list follows a third page in and out, and calls on click", { timeout: 60000 }, async () => {
    const server = await start({ presence: true, grace: 0 });
    const alice = await person(0, server, 'alice');
    const bob = await person(1, server, 'bob');
    await listBecomes(alice, ['bob']);
    await listBecomes(bob, ['alice']);
    const carol = await person(0, server, 'carol');
    await listBecomes(alice, ['bob', 'carol']);
    await carol.context().close();
    await listBecomes(alice, ['bob']);
    await alice.click('ul#online-users li[data-username="bob"] button');
    await waitFor(alice, 'calling', 'Calling bob…');
    await accept(alice, bob, 'bob', 'alice');
    // Busy is marked for the others.
    const dave = await person(0, server, 'dave');
    await dave.waitForFunction(() => document.querySelector('ul#online-users li[data-username="bob"]')?.dataset.busy === 'true', null, { timeout: 10000 });
    assert.equal(await dave.isDisabled('ul#online-users li[data-username="bob"] button'), true);
    assert.deepEqual([...alice.errors, ...bob.errors, ...dave.errors], []);
  });

  test('without [presence] no list is shown', { timeout: 30000 }, async () => {
    const server = await start();
    const alice = await person(0, server, 'alice');
    await person(1, server, 'bob');
    await alice.waitForTimeout(1500);
    assert.equal(await alice.isVisible('#presence'), false);
    assert.deepEqual(await listed(alice), []);
  });

  test('a call link opened in a fresh page calls after login; names are one user whatever their case', { timeout: 60000 }, async () => {
    const server = await start();
    const bob = await person(1, server, 'bob');
    // "BOB" is bob: taken.
    const impostor = await open(0, server);
    await waitFor(impostor, 'logged-out');
    await impostor.fill('input#username', 'BOB');
    await impostor.click('button#login');
    await waitFor(impostor, 'logged-out', 'Login failed: the name BOB is taken');
    assert.equal(await impostor.getAttribute('#status', 'role'), 'alert');
    assert.equal(await impostor.getAttribute('#status', 'data-tone'), 'error');
    for (const attribute of ['autocapitalize', 'autocorrect']) {
      assert.equal(await impostor.getAttribute('input#username', attribute), 'off');
      assert.equal(await impostor.getAttribute('input#username-to-call', attribute), 'off');
    }
    assert.equal(await impostor.getAttribute('input#username', 'spellcheck'), 'false');
    // A name over the limit gets a sentence, not a silent cut.
    await impostor.fill('input#username', 'x'.repeat(40));
    assert.equal(await impostor.inputValue('input#username'), 'x'.repeat(40));
    await impostor.click('button#login');
    await waitFor(impostor, 'logged-out', 'That name has 40 characters: use at most 32.');

    // The link bob shares, opened by dave.
    const link = `${server.url}?call=${encodeURIComponent('bob')}`;
    const dave = await open(0, server);
    await dave.goto(link);
    await waitFor(dave, 'logged-out', 'Log in to call bob.');
    await dave.fill('input#username', 'dave');
    await dave.click('button#login');
    await waitFor(dave, 'calling', 'Calling bob…');
    await accept(dave, bob, 'bob', 'dave');
    await dave.click('button#close-call');
    await waitFor(bob, 'idle', 'dave hung up.');

    // Calling "BOB" rings bob, and the page then names him as he typed his name.
    const alice = await person(0, server, 'alice');
    await call(alice, 'BOB');
    await waitFor(alice, 'calling', 'Calling BOB…');
    await accept(alice, bob, 'bob', 'alice');
    assert.deepEqual([...alice.errors, ...bob.errors, ...dave.errors], []);
  });

  test('logging out frees the name at once and shows the login form', { timeout: 30000 }, async () => {
    const server = await start(); // with the default grace period: logout is on purpose
    const bob = await person(1, server, 'bob');
    await bob.click('button#logout');
    await waitFor(bob, 'logged-out');
    assert.equal(await bob.isVisible('input#username'), true);
    assert.equal(await bob.isVisible('button#logout'), false);
    const again = await person(0, server, 'bob');
    assert.equal(await state(again), 'idle');
  });

  test('a reload keeps the name: back at once, not locked out for the grace period; log out forgets it', { timeout: 60000 }, async () => {
    // The default 30 s grace: without the tab's kept token, the reload would find its own
    // name held for it and be refused ("the name dave is taken") until the grace ran out.
    const server = await start();
    const dave = await person(0, server, 'dave');
    const reloaded = Date.now();
    await dave.reload();
    await waitFor(dave, 'idle', '', 10000);
    assert.match(await dave.textContent('#whoami'), /dave/);
    console.log(`# back as dave ${Date.now() - reloaded} ms after the reload (the grace period is 30 s)`);
    // The token is the tab's own: another tab of the same browser is not dave.
    const other = await dave.context().newPage();
    suite.opened.push(other);
    await other.goto(server.url);
    await waitFor(other, 'logged-out');
    await other.fill('input#username', 'dave');
    await other.click('button#login');
    await waitFor(other, 'logged-out', 'taken');
    // The reloaded dave is still dave to the others: he can be called.
    const erin = await person(1, server, 'erin');
    await call(erin, 'dave');
    await waitFor(dave, 'ringing', 'erin is calling you.');
    await dave.click('button#decline-call');
    await waitFor(erin, 'idle', 'declined');
    // A reload while a call rings never answers it: dave is back, not in a call.
    await call(erin, 'dave');
    await waitFor(dave, 'ringing', 'erin is calling you.');
    await dave.reload();
    await waitFor(dave, 'idle', '', 10000);
    await waitFor(erin, 'idle', 'dave hung up.');
    assert.equal(await dave.evaluate(() => window.__pcs.length), 0, 'no peer connection on the reloaded page');
    // Logging out forgets it: a reload then shows the login form, and the name is free.
    await dave.click('button#logout');
    await waitFor(dave, 'logged-out');
    await dave.reload();
    await waitFor(dave, 'logged-out');
    await other.fill('input#username', 'dave');
    await other.click('button#login');
    await waitFor(other, 'idle');
  });

  for (const [label, viewport] of [['phone', { width: 390, height: 844 }], ['desktop', { width: 1280, height: 800 }]]) {
    test(`the other side's camera and microphone are shown; screenshots at ${viewport.width}x${viewport.height}`, { timeout: 60000 }, async () => {
      const server = await start();
      const alice = await open(0, server, { viewport });
      // Watch the ringtone's volume as the page sets it (the real WebAudio still plays).
      await alice.evaluate(() => {
        window.__volume = [];
        const set = AudioParam.prototype.setValueAtTime;
        AudioParam.prototype.setValueAtTime = function (value, time) {
          window.__volume.push(value);
          return set.call(this, value, time);
        };
      });
      await waitFor(alice, 'logged-out');
      await alice.waitForFunction(() => document.querySelector('video#local').videoWidth > 0, null, { timeout: 10000 });
      assert.equal(await alice.isVisible('#welcome'), true);
      assert.equal(await alice.isVisible('video#remote'), false, 'no empty picture before login');
      await screenshot(alice, `${label}-logged-out`);
      // The QR code of the page, as the browser loads it (over HTTP/2).
      await alice.click('button#show-qr');
      await alice.waitForFunction(() => document.querySelector('img#share-qr').naturalWidth > 0, null, { timeout: 5000 });
      await login(alice, 'alice');
      await alice.waitForFunction(() => document.querySelector('img#share-qr').src.endsWith('/qr.svg?call=alice')
        && document.querySelector('img#share-qr').naturalWidth > 0, null, { timeout: 5000 });
      // This server listens on 127.0.0.1 only: the code is of the page's own address, and the
      // sentence beside it says a phone cannot open that (no LAN address nothing serves).
      const qrText = await alice.evaluate(async () => (await fetch('/qr.svg?call=alice', { method: 'HEAD' })).headers.get('x-qr-text'));
      assert.equal(qrText, `${server.url}?call=alice`);
      await alice.waitForFunction((port) => document.querySelector('#share-text').textContent
        === `This server listens on this machine only, so a phone cannot open ${location.origin}/?call=alice: `
        + `start dialtone with --listen 0.0.0.0:${port} to call from other devices.`, server.port, { timeout: 5000 });
      await screenshot(alice, `${label}-share`);
      await alice.click('button#show-qr');
      const bob = await person(1, server, 'bob');
      await call(bob, 'alice');
      await waitFor(alice, 'ringing', 'bob is calling you.');
      await alice.waitForFunction(() => /^Ringing for 0:0\d$/.test(document.querySelector('#call-timer').textContent), null, { timeout: 5000 });
      assert.equal(await alice.isVisible('button#silence'), true);
      assert.ok((await alice.evaluate(() => window.__volume)).includes(0.12), 'the ringtone sounds');
      await screenshot(alice, `${label}-ringing`);
      await alice.click('button#silence');
      assert.equal(await alice.evaluate(() => window.__volume.at(-1)), 0, 'silenced');
      assert.equal(await alice.isVisible('button#silence'), false);
      await alice.click('button#accept-call');
      await waitFor(alice, 'in-call', 'In a call with bob.');
      await expectMediaFlowing(alice);
      await alice.waitForTimeout(500);
      await screenshot(alice, `${label}-in-call`);
      assert.equal(await alice.isVisible('#remote-note'), false);
      await bob.click('button#toggle-camera');
      await bob.click('button#toggle-mic');
      await alice.waitForFunction(() => document.querySelector('#remote-note').textContent === 'bob turned the camera off · bob is muted', null, { timeout: 5000 });
      assert.equal(await alice.isVisible('#remote-note'), true);
      await screenshot(alice, `${label}-camera-off`);
      await bob.click('button#toggle-camera');
      await alice.waitForFunction(() => document.querySelector('#remote-note').textContent === 'bob is muted', null, { timeout: 5000 });
      // Fit by default (nothing cropped), a double tap to fill.
      assert.equal(await alice.$eval('video#remote', (v) => getComputedStyle(v).objectFit), 'contain');
      await alice.dblclick('video#remote');
      assert.equal(await alice.$eval('video#remote', (v) => getComputedStyle(v).objectFit), 'cover');
      // Full screen, from the "More" menu; picture-in-picture offered only where the browser has it.
      await alice.click('button#more');
      assert.equal(await alice.isVisible('button#pip'), await alice.evaluate(() => document.pictureInPictureEnabled === true));
      await alice.click('button#fullscreen');
      await alice.waitForFunction(() => document.fullscreenElement?.id === 'stage', null, { timeout: 5000 });
      await alice.click('button#more');
      assert.equal((await alice.textContent('button#fullscreen')).trim(), 'Leave full screen');
      await alice.click('button#fullscreen');
      await alice.waitForFunction(() => document.fullscreenElement === null, null, { timeout: 5000 });
      // "Poor connection" from getStats: the real stats, with the round trip made long.
      assert.equal(await alice.isVisible('#quality'), false);
      await alice.evaluate(() => {
        const pc = window.__pcs.at(-1);
        const real = pc.getStats.bind(pc);
        pc.getStats = async () => {
          const reports = await real();
          const slow = new Map();
          reports.forEach((report, id) => {
            slow.set(id, report.type === 'candidate-pair' ? { ...report, currentRoundTripTime: 0.9 } : report);
          });
          return slow;
        };
      });
      await alice.waitForFunction(() => !document.querySelector('#quality').hidden, null, { timeout: 6000 });
      await alice.click('button#close-call');
      await waitFor(bob, 'idle', 'alice hung up.');
      await call(alice, 'zed');
      await waitFor(alice, 'idle', 'No user named zed is logged in.');
      assert.equal(await alice.getAttribute('#status', 'role'), 'alert');
      await screenshot(alice, `${label}-error`);
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      console.log(`# ${label}: ${await statusText(alice)}`);
    });
  }
});
