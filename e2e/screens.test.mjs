// The call screens as people see them, at a phone's size upright and on its side, the
// smallest phones' and a desktop's: in a call the other person fills the screen and one bar of controls floats over
// it, always inside the screen; while ringing only Accept, Decline and Silence are there. Real
// Chromium calls real Chromium through the real binary; every state is saved as a screenshot
// in target/e2e-artifacts/screens-*.png.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  browserSuite, call, expectMediaFlowing, login, missing, screenshot, waitFor,
} from './harness.mjs';

const why = missing();
if (why && process.env.CI === 'true') {
  throw new Error(`the end-to-end tests cannot run: ${why}`);
}

const SIZES = [
  ['tiny', { width: 320, height: 568 }, true],
  ['phone', { width: 390, height: 844 }, true],
  ['phone-landscape', { width: 844, height: 390 }, true],
  ['desktop', { width: 1280, height: 800 }, false],
];

/** The ids of the buttons a person can see now: rendered, with a box inside the viewport. */
function visibleButtons(page) {
  return page.$$eval('button', (buttons) => buttons.filter((b) => {
    if (!b.checkVisibility({ opacityProperty: true, visibilityProperty: true })) return false;
    const box = b.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && box.bottom > 0 && box.right > 0
      && box.top < innerHeight && box.left < innerWidth;
  }).map((b) => b.id).sort());
}

/**
 * Whether a control is whole inside the viewport and the topmost element at its centre, so a
 * click there lands on it (nothing covers it).
 */
function reachable(page, selector) {
  return page.$eval(selector, (el) => {
    const box = el.getBoundingClientRect();
    const inside = box.left >= 0 && box.top >= 0 && box.right <= innerWidth && box.bottom <= innerHeight;
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return { inside, onTop: el.contains(hit), box: [box.left, box.top, box.right, box.bottom].map(Math.round) };
  });
}

/** The share of the viewport the other person's video covers. */
function remoteShare(page) {
  return page.$eval('video#remote', (video) => {
    const box = video.getBoundingClientRect();
    const width = Math.max(0, Math.min(box.right, innerWidth) - Math.max(box.left, 0));
    const height = Math.max(0, Math.min(box.bottom, innerHeight) - Math.max(box.top, 0));
    return (width * height) / (innerWidth * innerHeight);
  });
}

describe('the call screens', { skip: why ?? false, timeout: 300000 }, () => {
  const suite = browserSuite({ before, after, afterEach });

  for (const [label, viewport, hasTouch] of SIZES) {
    test(`at ${viewport.width}x${viewport.height}: home, calling, ringing and in a call`, { timeout: 90000 }, async () => {
      const server = await suite.start({ presence: true });
      const shot = (page, state) => screenshot(page, `screens-${label}-${state}`);
      const alice = await suite.open(suite.browsers[0], server, { viewport, hasTouch });
      await waitFor(alice, 'logged-out');
      await alice.waitForFunction(() => document.querySelector('video#local').videoWidth > 0, null, { timeout: 10000 });
      await shot(alice, 'logged-out');
      await login(alice, 'alice');
      const bob = await suite.open(suite.browsers[1], server, { viewport, hasTouch });
      await login(bob, 'bob');

      // Home: the call form, who's online, my link and the QR code's button; the name once, in
      // the header.
      await alice.waitForFunction(() => document.querySelector('ul#online-users li[data-username="bob"]'), null, { timeout: 10000 });
      for (const selector of ['#call-form', '#presence', '#my-link', 'button#show-qr', 'button#logout']) {
        assert.equal(await alice.isVisible(selector), true, `${selector} on the home screen`);
      }
      assert.equal(await alice.textContent('#whoami'), 'alice');
      assert.equal(await alice.$eval('#status', (el) => el.dataset.quiet), 'true', '"Logged in as alice." is read out, not shown again');
      assert.match(await alice.textContent('#my-link-url'), /\/\?call=alice$/);
      assert.deepEqual(await alice.$$eval('button#toggle-mic, button#close-call', (bs) => bs.map((b) => b.checkVisibility())), [false, false], 'no call controls before a call');
      await shot(alice, 'idle');
      await alice.click('button#show-qr');
      await alice.waitForFunction(() => document.querySelector('img#share-qr').naturalWidth > 0, null, { timeout: 5000 });
      await shot(alice, 'idle-qr');
      await alice.click('button#show-qr');

      // Calling: my preview, "Calling bob…", the ring timer, and Cancel alone.
      await call(alice, 'bob');
      await waitFor(alice, 'calling', 'Calling bob…');
      await waitFor(bob, 'ringing', 'alice is calling you.');
      assert.deepEqual(await visibleButtons(alice), ['close-call']);
      assert.equal((await alice.textContent('button#close-call')).trim(), 'Cancel');
      assert.equal(await alice.textContent('#call-title'), 'Calling bob…');
      assert.equal(await alice.isVisible('video#local'), true, 'my preview while it rings');
      await alice.waitForFunction(() => /^Ringing 0:0\d$/.test(document.querySelector('#call-timer').textContent), null, { timeout: 5000 });
      // Ringing: the caller's name large, and exactly Accept, Decline and Silence.
      assert.deepEqual(await visibleButtons(bob), ['accept-call', 'decline-call', 'silence']);
      assert.equal(await bob.textContent('#call-title'), 'alice');
      assert.ok(await bob.$eval('#call-title', (el) => parseFloat(getComputedStyle(el).fontSize)) >= 30, 'the name is large');
      for (const page of [alice, bob]) {
        assert.equal(await page.isVisible('#call-form'), false);
        assert.equal(await page.isVisible('button#show-qr'), false);
      }
      const accept = await reachable(bob, 'button#accept-call');
      assert.ok(accept.inside && accept.onTop, JSON.stringify(accept));
      await shot(alice, 'calling');
      await shot(bob, 'ringing');

      await bob.click('button#accept-call');
      await waitFor(alice, 'in-call', 'In a call with bob.');
      await waitFor(bob, 'in-call', 'In a call with alice.');
      await Promise.all([expectMediaFlowing(alice), expectMediaFlowing(bob)]);

      // In a call: the other person covers the screen, the bar is inside it and on top, and
      // nothing of the home screen shows.
      for (const [page, peer] of [[alice, 'bob'], [bob, 'alice']]) {
        const share = await remoteShare(page);
        assert.ok(share >= 0.8, `the remote video covers ${(share * 100).toFixed(0)} % of the viewport`);
        for (const control of ['button#close-call', 'button#toggle-mic', 'button#toggle-camera', 'button#more']) {
          const where = await reachable(page, control);
          assert.ok(where.inside && where.onTop, `${control}: ${JSON.stringify(where)}`);
        }
        assert.equal((await page.textContent('button#close-call')).trim(), 'Hang up');
        assert.deepEqual(await visibleButtons(page), ['close-call', 'more', 'toggle-camera', 'toggle-mic', 'verify']);
        for (const gone of ['#call-form', 'button#show-qr', '#my-link', '#login-form', 'header']) {
          assert.equal(await page.isVisible(gone), false, `${gone} in a call`);
        }
        assert.equal(await page.textContent('#call-title'), peer);
        await page.waitForFunction(() => /^0:0\d$/.test(document.querySelector('#call-timer').textContent), null, { timeout: 5000 });
        // Each icon is drawn here, and each control has a label.
        for (const control of await page.$$('#controls button')) {
          assert.ok(await control.$('svg use'), 'an inline icon');
          assert.ok((await control.innerText()).trim().length > 0, 'a visible label');
        }
      }
      await shot(alice, 'in-call');

      // My tile goes to the corner it is dragged to.
      const tile = await alice.$eval('#local-tile', (el) => {
        const box = el.getBoundingClientRect();
        return { x: box.left + box.width / 2, y: box.top + box.height / 2, corner: el.dataset.corner };
      });
      assert.equal(tile.corner, 'br');
      await alice.mouse.move(tile.x, tile.y);
      await alice.mouse.down();
      await alice.mouse.move(viewport.width * 0.2, viewport.height * 0.3, { steps: 5 });
      await alice.mouse.up();
      assert.equal(await alice.$eval('#local-tile', (el) => el.dataset.corner), 'tl');

      // More: full screen, picture-in-picture where the browser has it, fit or fill, my link.
      await alice.click('button#more');
      assert.equal(await alice.isVisible('button#fullscreen'), true);
      assert.equal(await alice.isVisible('button#call-link'), true);
      await shot(alice, 'more');
      await alice.click('button#fit');
      assert.equal(await alice.$eval('video#remote', (v) => getComputedStyle(v).objectFit), 'cover');
      assert.equal(await alice.isVisible('#more-menu'), false, 'a choice closes the menu');

      // The safety code, the same on both sides.
      await alice.click('button#verify');
      await bob.click('button#verify');
      const codes = await Promise.all([alice, bob].map(async (page) => {
        await page.waitForFunction(() => document.querySelector('#safety-code').dataset.code, null, { timeout: 5000 });
        return page.$eval('#safety-code', (el) => el.dataset.code);
      }));
      assert.equal(codes[0], codes[1]);
      await shot(alice, 'safety-code');
      await alice.click('button#verify');
      await bob.click('button#verify');

      // Cameras off: mine says so in my tile, theirs over their picture.
      await alice.click('button#toggle-camera');
      await bob.click('button#toggle-camera');
      assert.equal(await alice.isVisible('#local-note'), true);
      await alice.waitForFunction(() => document.querySelector('#remote-note').textContent === 'bob turned the camera off', null, { timeout: 5000 });
      assert.equal((await alice.textContent('button#toggle-camera')).trim(), 'Camera on');
      await shot(alice, 'cameras-off');
      await alice.click('button#toggle-camera');
      await bob.click('button#toggle-camera');
      await alice.waitForFunction(() => document.querySelector('#remote-note').hidden, null, { timeout: 5000 });
      await expectMediaFlowing(alice);

      // The signaling socket drops: the call goes on, and the screen says what it is doing.
      await alice.evaluate(() => window.__sockets.at(-1).close(3000, 'dropped by the test'));
      await waitFor(alice, 'reconnecting', 'Reconnecting…', 5000);
      await shot(alice, 'reconnecting');
      assert.equal(await alice.isVisible('#status'), true, 'shown over the call');
      await waitFor(alice, 'in-call', 'In a call with bob.', 10000);

      // Left alone, the bar fades; a move brings it back.
      await alice.mouse.move(viewport.width / 2, viewport.height * 0.4);
      await alice.waitForFunction(() => document.querySelector('#stage').dataset.bar === 'hidden', null, { timeout: 10000 });
      await alice.waitForTimeout(600); // the fade's transition
      assert.equal(await alice.$eval('#controls', (el) => getComputedStyle(el).opacity), '0');
      await shot(alice, 'in-call-faded');
      await alice.mouse.move(viewport.width / 2, viewport.height * 0.5);
      assert.equal(await alice.$eval('#stage', (el) => el.dataset.bar), 'shown');
      if (hasTouch) {
        // A finger on the faded bar only brings it back: it does not hang up.
        await bob.mouse.move(viewport.width / 2, viewport.height * 0.4); // off the controls
        await bob.waitForFunction(() => document.querySelector('#stage').dataset.bar === 'hidden', null, { timeout: 10000 });
        await bob.tap('button#close-call');
        assert.equal(await bob.$eval('#stage', (el) => el.dataset.bar), 'shown');
        await bob.waitForTimeout(500);
        assert.equal(await bob.$eval('#status', (el) => el.dataset.state), 'in-call', 'still in the call');
        await bob.tap('button#close-call');
        await waitFor(bob, 'idle', 'You hung up.');
      } else {
        await alice.click('button#close-call');
        await waitFor(alice, 'idle', 'You hung up.');
      }
      const [stayed, ended] = hasTouch ? [alice, 'bob'] : [bob, 'alice'];
      await waitFor(stayed, 'idle', `${ended} hung up.`);
      assert.equal(await stayed.isVisible('#call-form'), true, 'home again');
      await shot(alice, 'after');
      await call(alice, 'zed');
      await waitFor(alice, 'idle', 'No user named zed is logged in.');
      await shot(alice, 'error');
      assert.deepEqual([...alice.errors, ...bob.errors], []);
    });
  }
});
