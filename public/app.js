// dialtone's call page: log in, call someone by name, accept or decline, hang up, call again.
//
// It speaks the tutorial's wire format over a WebSocket to this page's own origin (/ws).
// ICE servers come only from the login reply. A call outlives the signaling socket: when it
// drops, the peer connection and media carry on, the page reconnects and logs in with its
// reconnect token (the server held the name and call), or, when the server restarted and
// forgot everyone, logs in again and asks to resume the call, which the other page does too. Candidates trickle: each is sent as it is
// found, never before the offer or answer it belongs to, and remote ones that arrive early
// wait for the remote description.
//
// Who may log in is the server's choice (GET /access): a name alone, a name and the site
// password, or an invite link whose token names the user. A token from `#token=` in the
// address is kept in localStorage and removed from the address bar at once; a password is
// kept only when the person ticks "Remember on this device". "Forget this device" clears both.
//
// Around the call: who's online (when the server sends the list), call links (/?call=bob),
// names compared without regard to case, errors as alerts, the other side's camera and
// microphone state (the relayed `media` notice), a ringtone made with WebAudio, a hint when
// the connection is poor, full screen and picture-in-picture, a QR code of the link, and the
// safety code both people can compare (safety.js).

import { fingerprintOf, safetyCode } from './safety.js';

const $ = (selector) => document.querySelector(selector);
const ui = {
  status: $('#status'),
  loginForm: $('#login-form'),
  username: $('input#username'),
  callForm: $('#call-form'),
  callee: $('input#username-to-call'),
  callButton: $('button#call'),
  accept: $('button#accept-call'),
  decline: $('button#decline-call'),
  hangUp: $('button#close-call'),
  verify: $('button#verify'),
  safety: $('#safety-code'),
  mic: $('button#toggle-mic'),
  camera: $('button#toggle-camera'),
  local: $('video#local'),
  remote: $('video#remote'),
  welcome: $('#welcome'),
  whoami: $('#whoami'),
  logout: $('button#logout'),
  showQr: $('button#show-qr'),
  share: $('#share'),
  shareQr: $('img#share-qr'),
  shareText: $('#share-text'),
  copyLink: $('button#copy-link'),
  presence: $('#presence'),
  online: $('ul#online-users'),
  onlineMore: $('#online-more'),
  silence: $('button#silence'),
  timer: $('#call-timer'),
  stage: $('#stage'),
  localTile: $('#local-tile'),
  localNote: $('#local-note'),
  callTitle: $('#call-title'),
  callSubtitle: $('#call-subtitle'),
  more: $('button#more'),
  moreMenu: $('#more-menu'),
  callLink: $('button#call-link'),
  myLink: $('#my-link'),
  myLinkUrl: $('#my-link-url'),
  remoteNote: $('#remote-note'),
  quality: $('#quality'),
  fit: $('button#fit'),
  pip: $('button#pip'),
  fullscreen: $('button#fullscreen'),
  controls: $('#controls'),
  password: $('input#password'),
  passwordFields: document.querySelectorAll('.password-field'),
  remember: $('input#remember'),
  accessNote: $('#access-note'),
  forget: $('button#forget-device'),
};

/** Where this browser keeps what logs it in (per origin). */
const STORED = { token: 'dialtone.accessToken', name: 'dialtone.name', password: 'dialtone.password' };

/** How long a restarted ICE connection gets before the call is given up. */
const ICE_RESTART_GRACE_MS = 10000;
/**
 * How long an answered call may take to connect. A browser says "failed" only once its checks
 * time out, and never when it had nothing to check (every relay unreachable: UDP blocked and
 * no TURN over TCP), so without this such a call would say "In a call" for ever.
 */
const CONNECT_DEADLINE_MS = 30000;
const RECONNECT_MAX_MS = 10000;
/** The server's limit on names, in characters. */
const MAX_NAME_CHARS = 32;
/** A connection is poor above this round-trip time (s) or this share of packets lost. */
const POOR_RTT_S = 0.4;
const POOR_LOSS = 0.05;

let ws = null;
let reconnectDelay = 500;
let lostBecause = null; // why the server connection went, while reconnecting
let wantedName = null; // the name to log in with again after a reconnect
let me = null; // logged in as
let token = null; // takes the name (and call) back after a dropped connection or a reload
let iceServers = [];
let localStream = null;
let mediaReady = null; // settles once the camera and microphone are started, or refused
let mediaNote = '';
let call = null; // { peer, role, pc, offer, remoteQueue, localQueue, described, restarted, timer }
let pendingCall = new URLSearchParams(location.search).get('call'); // a call link's name
let onlineList = null; // the last presence list, when the server sends one
let access = { mode: 'open' }; // what the server asks for at login (GET /access)
let accessToken = null; // token mode: the signed token from an invite link or the operator's site
let password = null; // password mode: the site password, for logins after a lost connection
let authRetries = 0; // refused logins after a lost connection, retried a few times
let fromTab = false; // logging in with the token this tab kept across a reload

/** localStorage, or nothing when the browser refuses it (private modes, some embeds). */
const storage = {
  get(key) { try { return localStorage.getItem(key); } catch { return null; } },
  set(key, value) { try { localStorage.setItem(key, value); } catch { /* not kept */ } },
  remove(key) { try { localStorage.removeItem(key); } catch { /* nothing kept */ } },
};

/**
 * This tab's session (sessionStorage: per tab, gone when the tab closes): the name, its
 * reconnect token, and who I am in an answered call with, so a reload logs back in as the
 * same name at once while the server holds it, and rejoins that call (never one that was
 * still ringing). The token is never sent anywhere but the login.
 */
const tab = {
  key: 'dialtone.session',
  get() {
    try {
      const kept = JSON.parse(sessionStorage.getItem(this.key));
      return typeof kept?.name === 'string' && typeof kept?.token === 'string' ? kept : null;
    } catch {
      return null;
    }
  },
  /**
   * Keeps what a reload needs now, at every change of state while logged in (logging out,
   * and a refused login, clear it).
   */
  keep() {
    if (!me || !token) return;
    try {
      const peer = call?.answered ? call.peer : null;
      sessionStorage.setItem(this.key, JSON.stringify({ name: me, token, peer }));
    } catch { /* not kept: a reload then starts over */ }
  },
  clear() {
    try { sessionStorage.removeItem(this.key); } catch { /* nothing kept */ }
  },
};

/** Names as the server compares them: case-folded (near enough: ß is ss) and composed. */
function fold(name) {
  return name.normalize('NFC').toUpperCase().toLowerCase().normalize('NFC');
}

function sameName(a, b) {
  return a === b || (a != null && b != null && fold(a) === fold(b));
}

/** A message from the other side of the call: adopts their name as the server spells it. */
function fromPeer(message) {
  if (!call || !sameName(call.peer, message.username)) return false;
  call.peer = message.username;
  return true;
}

// ---------------------------------------------------------------- status and controls

/**
 * Which screen a state is shown on: `home` (log in, call someone, my link and preview), or
 * the whole screen for `ringing` (a call to me), `calling` (mine, not answered yet) and `call`.
 */
function screenFor(state) {
  if (!call) return 'home';
  if (state === 'ringing' || state === 'calling') return state;
  return state === 'in-call' || state === 'reconnecting' ? 'call' : 'home';
}

/** Whether the screen already shows what a status sentence says (it is then only read out). */
function alreadyShown(state, sentence) {
  if (state === 'idle') return sentence === `Logged in as ${me}.`;
  if (!call) return false;
  return (state === 'in-call' && sentence === `In a call with ${call.peer}.`)
    || (state === 'calling' && sentence === `Calling ${call.peer}…`)
    || (state === 'ringing' && sentence === `${call.peer} is calling you.`);
}

/** A button's visible label (beside its icon). */
function label(button, text) {
  button.querySelector('.label').textContent = text;
}

function show(state, sentence, tone = 'info') {
  tab.keep();
  ui.status.dataset.state = state;
  ui.status.textContent = sentence;
  // Errors and refusals are alerts: styled as such, and read out at once.
  ui.status.dataset.tone = tone;
  ui.status.setAttribute('role', tone === 'error' ? 'alert' : 'status');
  ui.status.dataset.quiet = String(tone !== 'error' && alreadyShown(state, sentence));
  const screen = screenFor(state);
  const screenChanged = document.body.dataset.screen !== screen;
  document.body.dataset.screen = screen;
  const ringing = state === 'ringing';
  ui.accept.hidden = !ringing;
  ui.decline.hidden = !ringing;
  if (ringing && call?.role === 'callee') ringtone.start();
  else ringtone.stop();
  ui.silence.hidden = !ringing || !ringtone.playing;
  const loggedIn = me !== null;
  ui.whoami.hidden = !loggedIn;
  ui.whoami.textContent = loggedIn ? me : '';
  ui.logout.hidden = !loggedIn;
  // No greyed-out buttons before they can do anything: the bar is there only while calling
  // (Cancel alone) and in a call.
  ui.controls.hidden = screen !== 'calling' && screen !== 'call';
  for (const control of [ui.mic, ui.camera, ui.more]) control.hidden = screen !== 'call';
  label(ui.hangUp, screen === 'calling' ? 'Cancel' : 'Hang up');
  if (screen !== 'call') closeMenu();
  ui.verify.hidden = state !== 'in-call' || call === null;
  if (ui.verify.hidden) {
    ui.safety.hidden = true;
    ui.verify.setAttribute('aria-expanded', 'false');
  }
  ui.myLink.hidden = !loggedIn;
  ui.welcome.hidden = loggedIn || state === 'reconnecting';
  ui.presence.hidden = !loggedIn || onlineList === null;
  updateShare();
  updateStage();
  updateCallTitle(state);
  updateTimer();
  renderOnline();
  ui.loginForm.hidden = !(state === 'logged-out' || state === 'connecting')
    || (access.mode === 'token' && !accessToken);
  ui.accessNote.hidden = !(access.mode === 'token' && !accessToken) || loggedIn;
  ui.forget.hidden = !['logged-out', 'connecting', 'idle'].includes(state)
    || !(storage.get(STORED.token) || storage.get(STORED.password));
  ui.callForm.hidden = state !== 'idle';
  ui.callButton.disabled = state !== 'idle';
  ui.hangUp.disabled = !(state === 'calling' || state === 'in-call' || state === 'ringing'
    || (state === 'reconnecting' && call !== null));
  if (screenChanged) bar.wake();
  if (ringing) ui.accept.focus();
}

/** The top of the call screens: whose call, and what it is doing. */
function updateCallTitle(state) {
  if (!call) {
    ui.callTitle.textContent = '';
    ui.callSubtitle.textContent = '';
    return;
  }
  const ringing = state === 'ringing';
  ui.callTitle.textContent = state === 'calling' ? `Calling ${call.peer}…` : call.peer;
  ui.callSubtitle.textContent = ringing ? 'is calling you' : '';
}

/**
 * The idle status: what just happened, if anything; else who I am (which the header shows
 * too, so that is only read out).
 */
function idle(what, tone = 'info') {
  const parts = [];
  if (what) parts.push(what);
  if (mediaNote) parts.push(mediaNote);
  show('idle', parts.length > 0 ? parts.join(' ') : `Logged in as ${me}.`, tone);
}

function sentence(text) {
  return /[.!?…]$/.test(text) ? text : `${text}.`;
}

// ---------------------------------------------------------------- the signaling socket

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

/** A login message: the name, the reconnect token if any, and what the server's mode asks for. */
function loginMessage(name) {
  const message = { type: 'login' };
  if (name) message.username = name;
  if (token) message.token = token;
  if (access.mode === 'password' && password !== null) message.password = password;
  if (access.mode === 'token' && accessToken) message.accessToken = accessToken;
  return message;
}

function logIn(name) {
  return send(loginMessage(name));
}

// ---------------------------------------------------------------- access

/** The claims of a JWT, read without checking (the server checks): for the name it holds. */
function claimsOf(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

/** Takes `#token=…` out of the address (so it is not bookmarked, shared or shown) and keeps it. */
function takeTokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fresh = fragment.get('token');
  if (!fresh) return;
  storage.set(STORED.token, fresh);
  fragment.delete('token');
  const rest = fragment.toString();
  history.replaceState(history.state, '', `${location.pathname}${location.search}${rest ? `#${rest}` : ''}`);
}

/** Asks the server which credential it wants; an older server (no /access) is open. */
async function loadAccess() {
  try {
    // A server that accepts but never answers must not keep the page from connecting.
    const response = await fetch('/access', { cache: 'no-store', signal: AbortSignal.timeout(5000) });
    if (response.ok) access = await response.json();
  } catch {
    // Open, as before access control existed.
  }
  accessToken = storage.get(STORED.token);
  password = storage.get(STORED.password);
  if (access.mode === 'token' && accessToken) {
    const name = claimsOf(accessToken)[access.nameClaim || 'sub'];
    // The invite names the user: log in at once, as that name.
    wantedName = typeof name === 'string' ? name : '';
  } else if (access.mode === 'password' && password !== null && storage.get(STORED.name)) {
    wantedName = storage.get(STORED.name);
  }
  // A reload of this tab: the server still holds the name for its token.
  const kept = tab.get();
  if (kept) {
    wantedName = kept.name;
    token = kept.token;
    fromTab = true;
    ui.username.value = kept.name;
  }
  renderAccess();
  show('connecting', 'Connecting to the server…');
}

/** Shows only what the server's mode needs on the login form. */
function renderAccess() {
  const mode = access.mode;
  for (const field of ui.passwordFields) field.hidden = mode !== 'password';
  ui.password.required = mode === 'password';
  const tokenName = mode === 'token' && accessToken ? claimsOf(accessToken)[access.nameClaim || 'sub'] : null;
  ui.username.readOnly = mode === 'token';
  if (mode === 'token') ui.username.value = typeof tokenName === 'string' ? tokenName : '';
  else if (!ui.username.value && storage.get(STORED.name)) ui.username.value = storage.get(STORED.name);
  if (mode === 'password' && password !== null) {
    ui.password.value = password;
    ui.remember.checked = true;
  }
  ui.accessNote.textContent = mode === 'token' && !accessToken
    ? 'You need an invite link to use this server. Ask whoever runs it for one.' : '';
}

/** What the logged-out page asks for, in the server's mode (and whom a call link calls). */
function loginPrompt() {
  if (pendingCall && !(access.mode === 'token' && !accessToken)) return `Log in to call ${pendingCall}.`;
  if (access.mode === 'password') return 'Connected. Enter your name and the password.';
  if (access.mode === 'token' && !accessToken) return 'Connected.';
  if (access.mode === 'token') return 'Connected. Log in with your invite.';
  return 'Connected. Choose a name and log in.';
}

/** Clears what this browser keeps, and logs out. */
function forgetDevice() {
  for (const key of Object.values(STORED)) storage.remove(key);
  accessToken = null;
  password = null;
  ui.password.value = '';
  ui.remember.checked = false;
  if (access.mode === 'token') ui.username.value = '';
  if (me || wantedName) logOut();
  renderAccess();
  show('logged-out', 'This device no longer keeps your login.');
}

/** The status of the call in progress, as it stands on this page. */
function showCall() {
  if (call.answered) show('in-call', `In a call with ${call.peer}.`);
  else if (call.role === 'caller') show('calling', `Calling ${call.peer}…`);
  else show('ringing', `${call.peer} is calling you.`);
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  ws = socket;
  socket.onopen = () => {
    reconnectDelay = 500;
    lostBecause = null;
    if (wantedName !== null) logIn(wantedName);
    else show('logged-out', loginPrompt());
  };
  socket.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const handle = handlers[message.type];
    if (handle) {
      Promise.resolve(handle(message)).catch((err) => console.error('dialtone:', message.type, err));
    }
  };
  let opened = false;
  socket.addEventListener('open', () => { opened = true; });
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    // Only a connection that was up says why it went; failed reconnect attempts keep that
    // first reason on screen ("restarting" stays until the server is back).
    if (event.code === 4001) {
      // Our token logged in on another connection: that one is us now.
      wantedName = null;
      token = null;
      tab.clear();
      me = null;
      endCall();
      show('logged-out', 'You logged in again on another connection.', 'error');
      return;
    }
    if (opened || !lostBecause) {
      lostBecause = event.code === 1001 ? 'The server is restarting.' : 'Connection to the server lost.';
    }
    // The call is not ended: its media does not pass through the server. The login after
    // the reconnect decides whether it goes on.
    me = null;
    show(wantedName ? 'reconnecting' : 'connecting', `${lostBecause} Reconnecting…`);
    retry(connect);
  };
}

/** Runs `action` after the current back-off delay, which doubles each time (with jitter). */
function retry(action) {
  const delay = reconnectDelay * (0.75 + Math.random() / 2);
  reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
  setTimeout(action, delay);
}

// ---------------------------------------------------------------- messages from the server

const handlers = {
  async login(message) {
    if (!message.success) {
      const reconnecting = wantedName !== null && me === null && ui.status.dataset.state === 'reconnecting';
      if (reconnecting && message.code === 'name-taken') {
        // After a network change the server may still hold our old socket until its
        // heartbeat notices; keep trying under the same name.
        show('reconnecting', `Waiting for the server to free the name ${wantedName}…`);
        retry(() => logIn(wantedName));
        return;
      }
      if (reconnecting && token && ['auth-failed', 'auth-required'].includes(message.code) && authRetries < 3) {
        // Our reconnect token takes the name back without the password or access token, but
        // an instance that just let our old socket go may not know it yet: try again shortly
        // before saying the login failed.
        authRetries += 1;
        show('reconnecting', 'Reconnecting…');
        retry(() => logIn(wantedName));
        return;
      }
      if (reconnecting && message.code === 'unavailable') {
        // Several instances share state through a backplane that is away for a moment.
        show('reconnecting', `${sentence(message.message)} Retrying…`);
        retry(() => logIn(wantedName));
        return;
      }
      wantedName = null;
      token = null;
      tab.clear();
      show('logged-out', `Login failed: ${sentence(message.message)}`, 'error');
      if (message.code === 'auth-failed' && access.mode === 'password') {
        // A remembered password that no longer works is not kept.
        storage.remove(STORED.password);
        password = null;
        ui.password.value = '';
        ui.password.focus();
      } else {
        ui.username.focus();
      }
      return;
    }
    me = message.username;
    wantedName = me;
    authRetries = 0;
    // The first login of a reloaded tab: the call it was in, answered, if any.
    const reloadedIn = fromTab ? tab.get()?.peer ?? null : null;
    fromTab = false;
    // A call link is used once, by the first login.
    const linked = pendingCall;
    pendingCall = null;
    token = typeof message.token === 'string' ? message.token : null;
    tab.keep();
    iceServers = Array.isArray(message.iceServers) ? message.iceServers : [];
    if (!mediaReady) mediaReady = startMedia();
    const held = message.resumed === true ? (message.otherUsername ?? null) : undefined;
    if (held !== undefined) {
      // The server held our session: it says which call it still has.
      if (call && sameName(held, call.peer)) return showCall();
      if (call) endCall(`The call with ${call.peer} ended while the connection was down.`);
      else if (held && sameName(held, reloadedIn)) rejoin(held); // reloaded in that call
      else {
        // We hung up meanwhile (or reloaded while it rang): end it for the other side too.
        if (held) send({ type: 'close', otherUsername: held });
        idle();
      }
      return;
    }
    if (call && call.answered) {
      // A fresh login with a call on this page: the server restarted. Both pages ask to
      // resume; the server pairs them when both have.
      send({ type: 'resume', otherUsername: call.peer });
      show('reconnecting', `Reconnecting the call with ${call.peer}…`);
      return;
    }
    // A call that was still being set up cannot be picked up again.
    if (call) endCall('Connection to the server lost: the call ended.', 'error');
    else idle();
    // Opened from a call link: call that person now that we are logged in.
    if (linked && !call) startCall(linked);
  },

  online(message) {
    onlineList = message;
    ui.presence.hidden = me === null;
    renderOnline();
  },

  media(message) {
    if (!fromPeer(message)) return;
    call.remoteMedia = { audio: message.audio === true, video: message.video === true };
    updateRemoteNote();
  },

  resume(message) {
    if (!fromPeer(message)) return;
    show('in-call', `In a call with ${call.peer}.`);
  },

  offer(message) {
    const from = message.username;
    if (call && sameName(call.peer, from) && call.pc) {
      const glare = call.pc.signalingState === 'have-local-offer';
      if (fromNewPeerConnection(message.offer)) {
        // The other side's page was reloaded (or both were: the name that sorts first waits
        // for the other's offer to be answered).
        if (glare && call.rejoining && me > from) return undefined;
        return acceptOffer(message.offer, { fresh: true });
      }
      // Both called each other at once: the peer whose name sorts first gives way, drops its
      // own offer and answers; the other ignores the incoming one and waits for that answer.
      if (glare && me > from) return undefined;
      // Otherwise: renegotiation or an ICE restart from the other side.
      return acceptOffer(message.offer, { renegotiation: true });
    }
    if (call) return; // the server answers "busy" for us; nothing reaches here normally
    call = newCall(from, 'callee');
    call.offer = message.offer;
    show('ringing', `${from} is calling you.`);
  },

  async answer(message) {
    if (!call || !call.pc || !fromPeer(message)) return;
    await call.pc.setRemoteDescription(message.answer);
    await applyQueuedCandidates();
    if (!call.answered) expectConnected();
    call.answered = true;
    show('in-call', `In a call with ${call.peer}.`);
  },

  async candidate(message) {
    if (!fromPeer(message)) return;
    if (call.pc && call.pc.remoteDescription) {
      await call.pc.addIceCandidate(message.candidate).catch((err) => console.warn('dialtone: candidate', err));
    } else {
      call.remoteQueue.push(message.candidate);
    }
  },

  decline(message) {
    if (fromPeer(message)) endCall(`${message.username} declined the call.`, 'error');
  },

  busy(message) {
    if (fromPeer(message)) endCall(`${message.username} is busy.`, 'error');
  },

  close(message) {
    if (!fromPeer(message)) return;
    if (message.reason === 'disconnected') endCall(`Connection to ${message.username} lost: the call ended.`, 'error');
    else if (message.reason === 'failed') endCall(`The connection to ${message.username} failed: the call ended.`, 'error');
    else endCall(`${message.username} hung up.`);
  },

  error(message) {
    const callEnding = ['unknown-user', 'self-call', 'already-in-call', 'unavailable'];
    if (call && call.role === 'caller' && !call.answered && callEnding.includes(message.code)) {
      endCall(message.code === 'unknown-user' ? `No user named ${call.peer} is logged in.` : sentence(message.message), 'error');
      return;
    }
    console.warn('dialtone: server said', message.code, message.message);
  },
};

// ---------------------------------------------------------------- media

async function startMedia() {
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    ui.local.srcObject = localStream;
    mediaNote = '';
  } catch (err) {
    localStream = null;
    const reasons = {
      NotAllowedError: 'Camera and microphone are blocked',
      NotFoundError: 'No camera or microphone was found',
      NotReadableError: 'The camera or microphone is in use by another program',
    };
    mediaNote = `${reasons[err.name] || `Camera and microphone are unavailable (${err.name})`}: you can still receive calls.`;
  }
  updateToggles();
  updateStage();
  if (ui.status.dataset.state === 'idle') idle();
}

function updateToggles() {
  const audio = localStream?.getAudioTracks() ?? [];
  const video = localStream?.getVideoTracks() ?? [];
  ui.mic.disabled = audio.length === 0;
  ui.camera.disabled = video.length === 0;
  ui.localTile.hidden = video.length === 0; // no empty preview box without a camera
  const muted = audio.length > 0 && audio.every((t) => !t.enabled);
  const dark = video.length > 0 && video.every((t) => !t.enabled);
  ui.mic.setAttribute('aria-pressed', String(muted));
  label(ui.mic, muted ? 'Unmute' : 'Mute');
  ui.camera.setAttribute('aria-pressed', String(dark));
  label(ui.camera, dark ? 'Camera on' : 'Camera off');
  // My tile says so when my camera is off (it would show a black picture).
  ui.localNote.hidden = !dark;
}

function toggle(tracks) {
  const on = tracks.some((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = !on; });
  updateToggles();
  sendMediaState();
}

/** Tells the other side whether my microphone and camera are on (shown over my picture). */
function sendMediaState() {
  if (!call || !call.answered) return;
  const on = (tracks) => tracks.length > 0 && tracks.some((t) => t.enabled);
  send({
    type: 'media',
    audio: on(localStream?.getAudioTracks() ?? []),
    video: on(localStream?.getVideoTracks() ?? []),
    otherUsername: call.peer,
  });
}

function updateRemoteNote() {
  const state = call?.remoteMedia;
  const notes = [];
  if (state && !state.video) notes.push(`${call.peer} turned the camera off`);
  if (state && !state.audio) notes.push(`${call.peer} is muted`);
  ui.remoteNote.hidden = notes.length === 0;
  ui.remoteNote.textContent = notes.join(' · ');
  // Their camera off sends black (or frozen) frames: the note takes the picture's place.
  ui.stage.dataset.remoteVideo = state && !state.video ? 'off' : 'on';
}

// ---------------------------------------------------------------- the call

function newCall(peer, role) {
  return {
    peer, role, pc: null, offer: null, remoteQueue: [], localQueue: [], described: false, answered: false,
    restarted: false, timer: null, connectTimer: null, started: Date.now(), connectedAt: null, remoteMedia: null, stats: null,
  };
}

function createPeerConnection() {
  const pc = new RTCPeerConnection({ iceServers });
  const current = call;
  pc.onicecandidate = (event) => {
    if (!event.candidate || call !== current) return;
    // Never before the offer or answer it belongs to.
    if (current.described) send({ type: 'candidate', candidate: event.candidate, otherUsername: current.peer });
    else current.localQueue.push(event.candidate);
  };
  pc.ontrack = (event) => {
    if (call !== current) return;
    ui.remote.srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => {
    if (call !== current) return;
    onConnectionState(pc.connectionState);
  };
  if (localStream) {
    localStream.getTracks().forEach((track) => pc.addTrack(track, localStream));
  } else {
    // Without a camera we can still see and hear the other side.
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
  }
  return pc;
}

/** Sends our offer or answer, then the candidates found while it was being made. */
function sendDescription() {
  const kind = call.pc.localDescription.type;
  send({ type: kind, [kind]: call.pc.localDescription, otherUsername: call.peer });
  call.described = true;
  for (const candidate of call.localQueue.splice(0)) {
    send({ type: 'candidate', candidate, otherUsername: call.peer });
  }
}

async function applyQueuedCandidates() {
  for (const candidate of call.remoteQueue.splice(0)) {
    await call.pc.addIceCandidate(candidate).catch((err) => console.warn('dialtone: candidate', err));
  }
}

async function placeCall(peer) {
  call = newCall(peer, 'caller');
  show('calling', `Calling ${peer}…`);
  const current = call;
  await mediaReady; // a call placed before the camera started would carry no picture
  if (call !== current) return;
  call.pc = createPeerConnection();
  await call.pc.setLocalDescription();
  if (call !== current) return;
  sendDescription();
}

async function acceptOffer(offer, { renegotiation = false, fresh = false } = {}) {
  const current = call;
  if (fresh) {
    // A DTLS session cannot move to the other side's new peer connection: ours starts anew,
    // at once (before any await), so the candidates that follow the offer wait for it.
    clearTimeout(call.timer);
    call.pc.close();
    Object.assign(call, { pc: createPeerConnection(), remoteQueue: [], localQueue: [], restarted: false, rejoining: false });
  }
  if (!call.pc) {
    await mediaReady;
    if (call !== current) return;
    call.pc = createPeerConnection();
  }
  await call.pc.setRemoteDescription(offer); // rolls back our own offer if both called at once
  await applyQueuedCandidates();
  call.described = false; // candidates of the new answer wait for it
  await call.pc.setLocalDescription();
  if (call !== current) return;
  sendDescription();
  if (!renegotiation) expectConnected();
  call.answered = true;
  if (!renegotiation || ui.status.dataset.state === 'calling') show('in-call', `In a call with ${call.peer}.`);
}

/** Whether an offer from the other side comes from a peer connection other than ours knows. */
function fromNewPeerConnection(offer) {
  const known = fingerprintOf(call.pc.remoteDescription?.sdp);
  return known !== null && fingerprintOf(offer?.sdp) !== known;
}

/**
 * Back into the call the server held for this tab across a reload: the old page's peer
 * connection is gone, so a new one offers, and the other page starts a new one to answer.
 */
async function rejoin(peer) {
  call = newCall(peer, 'caller');
  Object.assign(call, { answered: true, rejoining: true });
  const current = call;
  show('reconnecting', `Reconnecting the call with ${peer}…`);
  call.timer = setTimeout(() => {
    if (call === current && call.pc?.connectionState !== 'connected') {
      hangUp(`The call with ${peer} could not be picked up again.`, 'error', 'failed');
    }
  }, ICE_RESTART_GRACE_MS);
  await mediaReady;
  if (call !== current) return;
  call.pc = createPeerConnection();
  await call.pc.setLocalDescription();
  if (call !== current) return;
  // What was held for the old page (its candidates) belongs to the old connection.
  call.remoteQueue = [];
  sendDescription();
}

function onConnectionState(state) {
  if (state === 'connected') {
    clearTimeout(call.timer);
    call.answered = true;
    tab.keep();
    if (call.connectedAt === null) {
      call.connectedAt = Date.now();
      sendMediaState();
    }
    updateStage();
    updateSafetyCode().catch((err) => console.warn('dialtone: safety code', err));
    // While the server is away the status says so; it says "in a call" again once back.
    if (me && ui.status.dataset.state !== 'in-call') show('in-call', `In a call with ${call.peer}.`);
    return;
  }
  if (state !== 'failed') return;
  if (call.restarted) {
    hangUp(`The connection to ${call.peer} failed: the call ended.`, 'error', 'failed');
    return;
  }
  // One ICE restart, started by the caller; then the call ends with a reason.
  call.restarted = true;
  show('in-call', `The connection to ${call.peer} dropped: trying again…`);
  call.timer = setTimeout(() => {
    if (call && call.pc && call.pc.connectionState !== 'connected') {
      hangUp(`The connection to ${call.peer} failed: the call ended.`, 'error', 'failed');
    }
  }, ICE_RESTART_GRACE_MS);
  if (call.role === 'caller') {
    const current = call;
    call.described = false; // candidates of the restart offer wait for it
    call.pc.restartIce();
    call.pc.setLocalDescription().then(() => {
      if (call !== current) return;
      sendDescription();
    }).catch((err) => console.warn('dialtone: ICE restart', err));
  }
}

/** Counts an answered call that has not connected within the deadline as failed. */
function expectConnected() {
  const current = call;
  clearTimeout(call.connectTimer);
  call.connectTimer = setTimeout(() => {
    if (call === current && call.connectedAt === null && !call.restarted) onConnectionState('failed');
  }, CONNECT_DEADLINE_MS);
}

/** Ends the call on our side: the peer connection closed, the remote picture gone. */
function endCall(what = undefined, tone = 'info') {
  if (call) {
    clearTimeout(call.timer);
    clearTimeout(call.connectTimer);
    if (call.pc) call.pc.close();
  }
  call = null;
  ui.safety.hidden = true;
  ui.safety.textContent = '';
  delete ui.safety.dataset.code;
  ui.remote.srcObject = null;
  updateRemoteNote();
  ui.quality.hidden = true;
  if (document.pictureInPictureElement) document.exitPictureInPicture().catch(() => {});
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  if (me) idle(what, tone);
}

/**
 * Ends the call and tells the other side why: `hung-up` (the default), or `failed` when the
 * browsers could not connect, so both pages say the same.
 */
function hangUp(what, tone = 'info', reason = undefined) {
  if (call) send({ type: 'close', otherUsername: call.peer, ...(reason ? { reason } : {}) });
  endCall(what, tone);
}

// ---------------------------------------------------------------- around the call

/**
 * The stage: my preview alone before a call (hidden without a camera), both pictures in one,
 * and on the ringing and calling screens always there, as their background.
 */
function updateStage() {
  const hasPreview = localStream !== null && localStream.getVideoTracks().length > 0;
  // Until the call is answered there is no other picture: my preview fills the stage.
  const mode = call !== null && call.answered ? 'call' : hasPreview ? 'preview' : 'off';
  ui.stage.dataset.mode = mode;
  ui.stage.hidden = mode === 'off' && document.body.dataset.screen === 'home';
}

/** What the QR code says, as the server encoded it (on localhost: the LAN address). */
const shared = { path: null, link: null };

/** My call link: the one in the QR code when the server said, else this page's address. */
function callLink() {
  if (!me) return null;
  const path = `/qr.svg?call=${encodeURIComponent(me)}`;
  return shared.path === path && shared.link ? shared.link : `${location.origin}/?call=${encodeURIComponent(me)}`;
}

function updateShare() {
  const qr = me ? `/qr.svg?call=${encodeURIComponent(me)}` : '/qr.svg';
  if (!ui.share.hidden && ui.shareQr.getAttribute('src') !== qr) ui.shareQr.src = qr;
  if (shared.path !== qr) {
    shared.path = qr;
    shared.link = null;
    fetch(qr, { method: 'HEAD' }).then((reply) => {
      if (shared.path !== qr) return;
      shared.link = reply.headers.get('x-qr-text');
      updateShare();
    }).catch(() => {});
  }
  const link = callLink();
  ui.myLinkUrl.textContent = link ?? '';
  if (shared.link && loopback(shared.link)) {
    // The server listens on this machine only (--listen 127.0.0.1:…): say so, not "scan it".
    ui.shareText.textContent = 'This server listens on this machine only, so a phone cannot open '
      + `${shared.link}: start dialtone with --listen 0.0.0.0:${new URL(shared.link).port || 443} `
      + 'to call from other devices.';
    return;
  }
  ui.shareText.textContent = link
    ? `Scan it with a phone on the same network to call ${me}, or send the link: ${link}`
    : `Scan it with a phone on the same network to open this page there${shared.link ? ` (${shared.link})` : ''}.`;
}

/** Whether a URL names this machine only (localhost, 127.0.0.0/8, ::1). */
function loopback(url) {
  try {
    const host = new URL(url).hostname;
    return host === 'localhost' || host === '[::1]' || /^127\./.test(host);
  } catch {
    return false;
  }
}

function renderOnline() {
  if (!onlineList) return;
  const others = (onlineList.users ?? []).filter((u) => typeof u.username === 'string' && !sameName(u.username, me));
  const items = others.map((user) => {
    const li = document.createElement('li');
    li.dataset.username = user.username;
    li.dataset.busy = String(user.busy === true);
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = user.username;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'accept';
    button.textContent = user.busy ? 'Busy' : 'Call';
    button.setAttribute('aria-label', `Call ${user.username}`);
    button.disabled = user.busy === true || call !== null || me === null;
    button.addEventListener('click', () => startCall(user.username));
    li.append(name, button);
    return li;
  });
  ui.online.replaceChildren(...items);
  if (items.length === 0) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'Nobody else is online.';
    ui.online.append(li);
  }
  const beyond = (onlineList.total ?? 0) - (onlineList.users?.length ?? 0);
  ui.onlineMore.hidden = beyond <= 0;
  ui.onlineMore.textContent = beyond > 0 ? `and ${beyond} more` : '';
}

/** The seconds a call has been ringing, or has lasted. */
function updateTimer() {
  const state = ui.status.dataset.state;
  // Ringing for how long, or (once connected) how long the call has lasted.
  const shown = call !== null && (['calling', 'ringing'].includes(state) || call.connectedAt !== null);
  ui.timer.hidden = !shown;
  if (!shown) return;
  const since = call.connectedAt ?? call.started;
  const seconds = Math.max(0, Math.floor((Date.now() - since) / 1000));
  const prefix = call.connectedAt ? '' : state === 'calling' ? 'Ringing ' : 'Ringing for ';
  ui.timer.textContent = `${prefix}${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}
setInterval(updateTimer, 1000);

/** A ringtone from oscillators (no audio files): two tones, on for a second, off for two. */
const ringtone = {
  context: null,
  gain: null,
  playing: false,
  timer: null,
  silenced: false,
  /** Audio may only start after a gesture: the login click unlocks it. */
  unlock() {
    if (this.context || !window.AudioContext) return;
    this.context = new AudioContext();
    this.gain = this.context.createGain();
    this.gain.gain.value = 0;
    this.gain.connect(this.context.destination);
    for (const frequency of [440, 480]) {
      const tone = this.context.createOscillator();
      tone.frequency.value = frequency;
      tone.connect(this.gain);
      tone.start();
    }
  },
  start() {
    if (this.playing || this.silenced || !this.context) return;
    this.playing = true;
    this.context.resume().catch(() => {});
    const ring = () => {
      const now = this.context.currentTime;
      this.gain.gain.setValueAtTime(0.12, now);
      this.gain.gain.setValueAtTime(0, now + 1);
    };
    ring();
    this.timer = setInterval(ring, 3000);
  },
  stop() {
    this.silenced = false;
    if (!this.playing) return;
    this.playing = false;
    clearInterval(this.timer);
    this.gain.gain.cancelScheduledValues(this.context.currentTime);
    this.gain.gain.setValueAtTime(0, this.context.currentTime);
  },
};

/** A hint from getStats: "Poor connection" on a long round trip or lost packets. */
async function checkQuality() {
  const current = call;
  if (!current || !current.pc || current.pc.connectionState !== 'connected') {
    ui.quality.hidden = true;
    return;
  }
  let rtt = null;
  let lost = 0;
  let received = 0;
  (await current.pc.getStats()).forEach((report) => {
    if (report.type === 'candidate-pair' && report.nominated && report.state === 'succeeded') {
      rtt = report.currentRoundTripTime ?? rtt;
    }
    if (report.type === 'inbound-rtp') {
      lost += report.packetsLost ?? 0;
      received += report.packetsReceived ?? 0;
    }
  });
  if (call !== current) return;
  const before = current.stats ?? { lost: 0, received: 0 };
  current.stats = { lost, received };
  const dLost = lost - before.lost;
  const dTotal = dLost + (received - before.received);
  const loss = dTotal > 0 ? dLost / dTotal : 0;
  ui.quality.hidden = !((rtt !== null && rtt > POOR_RTT_S) || loss > POOR_LOSS);
}
setInterval(() => { checkQuality().catch(() => {}); }, 2000);

function startCall(peer) {
  if (!me || call) return;
  if (!peer) {
    idle('Enter the name of the person to call.', 'error');
    return;
  }
  if (sameName(peer, me)) {
    idle('You cannot call yourself.', 'error');
    return;
  }
  placeCall(peer).catch((err) => endCall(`The call could not start (${err.name || err}).`, 'error'));
}

/** Frees the name at once (Close 1000 means "on purpose": no grace) and shows the login form. */
function logOut() {
  if (call) hangUp();
  const socket = ws;
  ws = null;
  wantedName = null;
  token = null;
  tab.clear();
  me = null;
  onlineList = null;
  if (socket) socket.close(1000, 'logged out');
  show('connecting', 'Logged out. Connecting…');
  connect();
}

// ---------------------------------------------------------------- what the person does

ui.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.username.value.trim();
  if (!name && !(access.mode === 'token' && accessToken)) {
    show('logged-out', 'Please enter a name.', 'error');
    return;
  }
  const length = [...name].length;
  if (length > MAX_NAME_CHARS) {
    show('logged-out', `That name has ${length} characters: use at most ${MAX_NAME_CHARS}.`, 'error');
    return;
  }
  if (access.mode === 'token' && !accessToken) return;
  if (access.mode === 'password') {
    if (!ui.password.value) {
      show('logged-out', 'Please enter the password.', 'error');
      ui.password.focus();
      return;
    }
    password = ui.password.value;
    if (ui.remember.checked) {
      storage.set(STORED.password, password);
      storage.set(STORED.name, name);
    } else {
      storage.remove(STORED.password);
    }
  }
  ringtone.unlock();
  wantedName = name;
  token = null;
  if (!logIn(name)) show('connecting', 'Not connected yet: logging in as soon as the server answers…');
});

ui.callForm.addEventListener('submit', (event) => {
  event.preventDefault();
  startCall(ui.callee.value.trim());
});

ui.accept.addEventListener('click', () => {
  if (!call || call.role !== 'callee' || !call.offer) return;
  const offer = call.offer;
  call.offer = null;
  show('in-call', `Connecting to ${call.peer}…`);
  acceptOffer(offer).catch((err) => hangUp(`The call could not start (${err.name || err}).`, 'error'));
});

ui.decline.addEventListener('click', () => {
  if (!call) return;
  const peer = call.peer;
  send({ type: 'decline', otherUsername: peer });
  endCall(`You declined ${peer}'s call.`);
});

ui.hangUp.addEventListener('click', () => {
  if (call) hangUp('You hung up.');
});

/**
 * Shows (when asked to) the code both people can read to each other: the same four words on
 * both sides mean nobody, not even the server, sits between their two browsers.
 */
async function updateSafetyCode() {
  if (ui.safety.hidden || !call?.pc) return;
  const current = call;
  const code = await safetyCode(call.pc.localDescription?.sdp, call.pc.remoteDescription?.sdp);
  if (call !== current || ui.safety.hidden) return;
  if (code) {
    ui.safety.dataset.code = code;
    const words = document.createElement('strong');
    words.textContent = code;
    ui.safety.replaceChildren('Safety code: ', words, `. Read it to ${call.peer}: the same four words on `
      + 'both screens mean your call is encrypted between your two browsers, with nobody in between.');
  } else {
    delete ui.safety.dataset.code;
    ui.safety.textContent = 'The safety code is ready once the call is connected.';
  }
}

ui.verify.addEventListener('click', () => {
  ui.safety.hidden = !ui.safety.hidden;
  ui.verify.setAttribute('aria-expanded', String(!ui.safety.hidden));
  updateSafetyCode().catch((err) => console.warn('dialtone: safety code', err));
});

ui.mic.addEventListener('click', () => toggle(localStream?.getAudioTracks() ?? []));
ui.camera.addEventListener('click', () => toggle(localStream?.getVideoTracks() ?? []));
ui.logout.addEventListener('click', logOut);
ui.forget.addEventListener('click', forgetDevice);

ui.silence.addEventListener('click', () => {
  ringtone.stop();
  ringtone.silenced = true;
  ui.silence.hidden = true;
});

ui.showQr.addEventListener('click', () => {
  ui.share.hidden = !ui.share.hidden;
  ui.showQr.setAttribute('aria-expanded', String(!ui.share.hidden));
  updateShare();
});

/** Copies my call link; where the clipboard is refused, the status shows it to copy by hand. */
async function copyLink() {
  if (!me) return;
  const link = callLink();
  const inCall = call !== null;
  try {
    await navigator.clipboard.writeText(link);
    if (inCall) flash(`Your call link is copied: ${link}`);
    else idle(`Your call link is copied: ${link}`);
  } catch {
    if (inCall) flash(`Your call link: ${link}`);
    else idle(`Copy your call link: ${link}`);
  }
}
ui.copyLink.addEventListener('click', copyLink);
ui.callLink.addEventListener('click', () => {
  closeMenu();
  copyLink();
});

/** A sentence shown on the call screen for a few seconds, the call's own status kept. */
function flash(text) {
  const state = ui.status.dataset.state;
  const before = ui.status.textContent;
  show(state, text);
  setTimeout(() => {
    if (ui.status.dataset.state === state && ui.status.textContent === text) show(state, before);
  }, 4000);
}

// The other person's picture fits whole by default (a landscape picture on a phone in
// portrait is not cropped); a double tap, or the menu, switches to filling the screen.
function switchFit() {
  const fill = ui.stage.dataset.fit !== 'fill';
  ui.stage.dataset.fit = fill ? 'fill' : 'fit';
  label(ui.fit, fill ? 'Fit the picture' : 'Fill the screen');
}
ui.fit.addEventListener('click', () => {
  closeMenu();
  switchFit();
});
ui.remote.addEventListener('dblclick', switchFit);

ui.fullscreen.addEventListener('click', () => {
  closeMenu();
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else ui.stage.requestFullscreen?.().catch(() => {});
});
document.addEventListener('fullscreenchange', () => {
  label(ui.fullscreen, document.fullscreenElement ? 'Leave full screen' : 'Full screen');
});
ui.pip.hidden = !document.pictureInPictureEnabled;
ui.pip.addEventListener('click', () => {
  closeMenu();
  if (document.pictureInPictureElement) document.exitPictureInPicture().catch(() => {});
  else if (ui.remote.srcObject) ui.remote.requestPictureInPicture().catch(() => {});
});

// ---------------------------------------------------------------- the call screen's controls

/** "More": picture-in-picture, full screen, fit or fill, and my call link. */
function closeMenu() {
  ui.moreMenu.hidden = true;
  ui.more.setAttribute('aria-expanded', 'false');
}
ui.more.addEventListener('click', () => {
  const open = ui.moreMenu.hidden;
  ui.moreMenu.hidden = !open;
  ui.more.setAttribute('aria-expanded', String(open));
  if (open) ui.moreMenu.querySelector('button:not([hidden])')?.focus();
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && !ui.moreMenu.hidden) {
    closeMenu();
    ui.more.focus();
  }
});
document.addEventListener('pointerdown', (event) => {
  if (!ui.moreMenu.hidden && !ui.moreMenu.contains(event.target) && !ui.more.contains(event.target)) closeMenu();
});

/** How long the call screen's bar and top stay after the last touch, key or pointer move. */
const BAR_FADE_MS = 4000;

/**
 * The bar over the picture fades when nothing happens for a few seconds, so the picture is
 * whole, and comes back on any tap, key or pointer move. A tap on a faded bar only brings it
 * back: it never hangs up by a touch on a button the person could not see.
 */
const bar = {
  timer: null,
  swallowClick: false,
  pointer: 'mouse', // the kind of the last pointer: a finger leaves :hover behind on a phone
  wake() {
    ui.stage.dataset.bar = 'shown';
    clearTimeout(this.timer);
    if (document.body.dataset.screen === 'call') this.timer = setTimeout(() => this.fade(), BAR_FADE_MS);
  },
  fade() {
    if (document.body.dataset.screen !== 'call') return;
    // Not while the call is still connecting, a menu or the safety code is open, the mouse
    // rests on the controls, or a key moved the focus into them.
    const busy = !call?.connectedAt || !ui.moreMenu.hidden || !ui.safety.hidden
      || (this.pointer === 'mouse' && ui.controls.matches(':hover')) || ui.stage.querySelector(':focus-visible') !== null;
    if (busy) this.wake();
    else ui.stage.dataset.bar = 'hidden';
  },
};
ui.stage.addEventListener('pointermove', (event) => {
  bar.pointer = event.pointerType;
  bar.wake();
});
ui.stage.addEventListener('pointerdown', (event) => {
  bar.pointer = event.pointerType;
  const faded = ui.stage.dataset.bar === 'hidden';
  // A mouse shows the bar as it moves there; a finger lands without warning.
  bar.swallowClick = faded && event.pointerType !== 'mouse';
  bar.wake();
}, true);
ui.stage.addEventListener('click', (event) => {
  if (!bar.swallowClick) return;
  bar.swallowClick = false;
  event.preventDefault();
  event.stopPropagation();
}, true);
document.addEventListener('keydown', () => bar.wake());
ui.stage.addEventListener('focusin', () => bar.wake());

/** My tile in a call: dragged anywhere, it settles in the nearest corner. */
let drag = null;
ui.localTile.addEventListener('pointerdown', (event) => {
  if (ui.stage.dataset.mode !== 'call') return;
  drag = { id: event.pointerId, x: event.clientX, y: event.clientY };
  ui.localTile.setPointerCapture(event.pointerId);
  ui.localTile.classList.add('dragging');
});
ui.localTile.addEventListener('pointermove', (event) => {
  if (drag?.id !== event.pointerId) return;
  ui.localTile.style.translate = `${event.clientX - drag.x}px ${event.clientY - drag.y}px`;
});
function dropTile(event) {
  if (drag?.id !== event.pointerId) return;
  const tile = ui.localTile.getBoundingClientRect();
  const stage = ui.stage.getBoundingClientRect();
  const top = tile.top + tile.height / 2 < stage.top + stage.height / 2;
  const left = tile.left + tile.width / 2 < stage.left + stage.width / 2;
  ui.localTile.dataset.corner = `${top ? 't' : 'b'}${left ? 'l' : 'r'}`;
  ui.localTile.style.translate = '';
  ui.localTile.classList.remove('dragging');
  drag = null;
}
ui.localTile.addEventListener('pointerup', dropTile);
ui.localTile.addEventListener('pointercancel', dropTile);

updateToggles();
takeTokenFromAddress();
show('connecting', 'Connecting to the server…');
// The preview shows as soon as the camera is allowed, before logging in.
mediaReady = startMedia();
loadAccess().finally(connect);
