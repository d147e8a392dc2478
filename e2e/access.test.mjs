// [access] as people meet it: an invite link made by `dialtone invite` opened on a phone-sized
// page, a reload that logs in again without the link, an expired link, a page with no link,
// and the site password (wrong, right, remembered, forgotten). Real Chromium, real binary.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  browserSuite, call, expectMediaFlowing, missing, runDialtone, screenshot, statusText, waitFor,
} from './harness.mjs';

const why = missing();
if (why && process.env.CI === 'true') {
  throw new Error(`the end-to-end tests cannot run: ${why}`);
}

const SECRET = 'an e2e secret that is longer than thirty-two bytes';
const PHONE = { width: 390, height: 844 };

/** An HS256 token written here, independently of dialtone (for links `invite` will not make). */
function token(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const message = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${message}.${createHmac('sha256', SECRET).update(message).digest('base64url')}`;
}

describe('access control in the page', { skip: why ?? false, timeout: 300000 }, () => {
  const suite = browserSuite({ before, after, afterEach });
  const open = (i, server, options) => suite.open(suite.browsers[i % suite.browsers.length], server, options);

  /** The fragment of an invite link that `dialtone invite` prints for `name`. */
  function invite(server, name) {
    const link = runDialtone(['invite', name, '--ttl', '1h', '--url', server.url, '--config', server.config]);
    assert.ok(link.startsWith(`${server.url}#token=`), link);
    return link.slice(server.url.length);
  }

  test('an invite link logs its person in on a phone, leaves the address bar, and works again after a reload', { timeout: 90000 }, async () => {
    const server = await suite.start({ grace: 0, access: { mode: 'token', secret: SECRET } });
    const mum = await open(0, server, { viewport: PHONE, path: invite(server, 'mum') });
    await waitFor(mum, 'idle', 'Logged in as mum.');
    assert.equal(new URL(mum.url()).hash, '', 'the token is gone from the address bar');
    assert.equal(await mum.isVisible('input#password'), false);
    const dad = await open(1, server, { path: invite(server, 'dad') });
    await waitFor(dad, 'idle', 'Logged in as dad.');
    await call(dad, 'mum');
    await waitFor(mum, 'ringing', 'dad is calling you.');
    await screenshot(mum, 'access-invite-phone-ringing');
    await mum.click('button#accept-call');
    await Promise.all([expectMediaFlowing(mum), expectMediaFlowing(dad)]);
    await dad.click('button#close-call');
    await waitFor(mum, 'idle', 'dad hung up.');
    // The same browser, later, without the link.
    await mum.reload();
    await waitFor(mum, 'idle', 'Logged in as mum.');
    assert.equal(await mum.inputValue('input#username'), 'mum');
    // "Forget this device": logged out, and the page says a link is needed.
    await mum.click('button#forget-device');
    await waitFor(mum, 'logged-out');
    await mum.waitForSelector('#access-note', { state: 'visible' });
    assert.match(await mum.textContent('#access-note'), /You need an invite link/);
    assert.equal(await mum.isVisible('#login-form'), false);
    await mum.reload();
    await waitFor(mum, 'logged-out');
    assert.match(await mum.textContent('#access-note'), /You need an invite link/);
    assert.deepEqual([...mum.errors, ...dad.errors], []);
  });

  test('an expired link says so, and a page without one asks for one', { timeout: 60000 }, async () => {
    const server = await suite.start({ grace: 0, access: { mode: 'token', secret: SECRET } });
    const expired = token({ sub: 'gran', exp: Math.floor(Date.now() / 1000) - 3600 });
    const gran = await open(0, server, { viewport: PHONE, path: `#token=${expired}` });
    await waitFor(gran, 'logged-out', 'this invite link has expired: ask for a new one');
    assert.equal(await gran.$eval('#status', (el) => el.dataset.tone), 'error');
    assert.equal(new URL(gran.url()).hash, '');
    await screenshot(gran, 'access-expired-phone');
    const stranger = await open(1, server, { viewport: PHONE });
    await waitFor(stranger, 'logged-out');
    await stranger.waitForSelector('#access-note', { state: 'visible' });
    assert.equal(await stranger.isVisible('#login-form'), false);
    await screenshot(stranger, 'access-no-invite-phone');
  });

  test("a link minted by docs/access.md's Node example logs its person in", { timeout: 60000 }, async () => {
    // The example as a reader copies it from the page.
    const docs = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'access.md'), 'utf8');
    const example = docs.match(/```js\n([\s\S]*?)```/)?.[1];
    assert.ok(example?.includes('export function dialtoneLink'), 'the Node example in docs/access.md');
    const module = join(mkdtempSync(join(tmpdir(), 'dialtone-docs-')), 'mint.mjs');
    writeFileSync(module, example);
    const { dialtoneLink } = await import(pathToFileURL(module));
    const server = await suite.start({ grace: 0, access: { mode: 'token', secret: SECRET } });
    const base = server.url.replace(/\/$/, '');
    const link = dialtoneLink(base, 'nurse', SECRET);
    assert.ok(link.startsWith(`${base}/#token=`), link);
    const page = await open(0, server, { path: link.slice(base.length + 1) });
    await waitFor(page, 'idle', 'Logged in as nurse.');
  });

  test('password mode asks for the password, refuses a wrong one, lets the right one in and remembers it when asked', { timeout: 60000 }, async () => {
    const hash = runDialtone(['hash-password'], 'swordfish\n');
    const server = await suite.start({ grace: 0, access: { mode: 'password', password_hash: hash } });
    const page = await open(0, server, { viewport: PHONE });
    await waitFor(page, 'logged-out', 'Enter your name and the password.');
    assert.equal(await page.isVisible('input#password'), true);
    await page.fill('input#username', 'ann');
    await page.fill('input#password', 'sword fish');
    await page.click('button#login');
    await waitFor(page, 'logged-out', 'wrong password');
    assert.equal(await page.$eval('#status', (el) => el.dataset.tone), 'error');
    await screenshot(page, 'access-password-wrong-phone');
    await page.fill('input#password', 'swordfish');
    await page.check('input#remember');
    await page.click('button#login');
    await waitFor(page, 'idle', 'Logged in as ann.');
    // Remembered on this device: a reload logs in at once.
    await page.reload();
    await waitFor(page, 'idle', 'Logged in as ann.');
    await page.click('button#forget-device');
    await waitFor(page, 'logged-out');
    await page.reload();
    await waitFor(page, 'logged-out', 'Enter your name and the password.');
    assert.equal(await page.inputValue('input#password'), '');
    // Not remembered unless asked.
    await page.fill('input#username', 'bea');
    await page.fill('input#password', 'swordfish');
    await page.click('button#login');
    await waitFor(page, 'idle', 'Logged in as bea.');
    assert.equal(await page.evaluate(() => localStorage.getItem('dialtone.password')), null);
    assert.ok(!(await statusText(page)).includes('swordfish'));
    assert.deepEqual(page.errors, []);
  });
});
