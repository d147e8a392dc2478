// The safety code's derivation (public/safety.js), as the page computes it: the same four
// words on both sides of a call, whoever offered; different words for any other fingerprint,
// which is what a server in the middle would have to hand each browser. Plain Node (its
// WebCrypto), no browser.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { WORDS, fingerprintOf, safetyCode } from '../public/safety.js';

const alice = 'sha-256 3A:7F:11:C2:9E:05:D4:6B:88:21:F0:4C:AA:93:5E:17:62:D8:0B:EC:41:9F:37:C5:A0:1E:7D:66:B3:28:F9:04';
const bob = 'sha-256 91:0C:E4:5A:2F:B8:73:D6:1B:C9:64:0E:FA:37:82:5D:A6:19:F3:4B:C0:2E:98:75:DB:41:6A:0F:E7:B2:53:8C';
const sdp = (fingerprint) => `v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:${fingerprint}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n`;

describe('the safety code', () => {
  test('256 distinct words, so four carry 32 bits', () => {
    assert.equal(WORDS.length, 256);
    assert.equal(new Set(WORDS).size, 256);
    assert.ok(WORDS.every((word) => /^[a-z]{3,7}$/.test(word)), 'short, lower-case words');
  });

  test('both sides get the same code, whoever offered', async () => {
    const onAlices = await safetyCode(sdp(alice), sdp(bob));
    const onBobs = await safetyCode(sdp(bob), sdp(alice));
    assert.equal(onAlices, onBobs);
    const words = onAlices.split(' ');
    assert.equal(words.length, 4);
    assert.ok(words.every((word) => WORDS.includes(word)), onAlices);
  });

  test('a fingerprint written in another case is the same fingerprint', async () => {
    const lower = `SHA-256 ${bob.split(' ')[1].toLowerCase()}`;
    assert.equal(await safetyCode(sdp(alice), sdp(lower)), await safetyCode(sdp(alice), sdp(bob)));
  });

  test('any other fingerprint changes the code: a server in the middle gives each side its own', async () => {
    const honest = await safetyCode(sdp(alice), sdp(bob));
    // The server hands alice its own fingerprint for "bob", and bob its own for "alice".
    const mallory1 = alice.replace('3A:7F', '3A:7E');
    const mallory2 = bob.replace('8C', '8D');
    const seenByAlice = await safetyCode(sdp(alice), sdp(mallory2));
    const seenByBob = await safetyCode(sdp(bob), sdp(mallory1));
    assert.notEqual(seenByAlice, honest);
    assert.notEqual(seenByBob, honest);
    assert.notEqual(seenByAlice, seenByBob);
    // One changed byte anywhere changes it (the fingerprints' every byte counts).
    for (let i = 8; i < alice.length; i += 3) {
      const changed = `${alice.slice(0, i)}${alice[i] === '0' ? '1' : '0'}${alice.slice(i + 1)}`;
      assert.notEqual(await safetyCode(sdp(changed), sdp(bob)), honest, changed);
    }
  });

  test('no code without both fingerprints', async () => {
    assert.equal(await safetyCode(sdp(alice), 'v=0\r\n'), null);
    assert.equal(await safetyCode(undefined, sdp(bob)), null);
    assert.equal(await safetyCode(sdp('sha-256'), sdp(bob)), null);
    assert.equal(fingerprintOf(`v=0\r\na=fingerprint:${alice}\r\na=fingerprint:${bob}\r\n`), alice);
  });
});
