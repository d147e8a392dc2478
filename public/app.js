// dialtone's call page: log in, call someone by name, accept or decline, hang up, call again.
//
// It speaks the tutorial's wire format over a WebSocket to this page's own origin (/ws).
// ICE servers come only from the login reply. A call outlives the signaling socket: when it
// drops, the peer connection and media carry on, the page reconnects and logs in with its
// reconnect token (the server held the name and call), or, when the server restarted and
// forgot everyone, logs in again and asks to resume the call, which the other page does too. Candidates trickle: each is sent as it is
// found, never before the offer or answer it belongs to, and remote ones that arrive early
// wait for the remote description.

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
  mic: $('button#toggle-mic'),
  camera: $('button#toggle-camera'),
  local: $('video#local'),
  remote: $('video#remote'),
};

/** How long a restarted ICE connection gets before the call is given up. */
const ICE_RESTART_GRACE_MS = 10000;
const RECONNECT_MAX_MS = 10000;

let ws = null;
let reconnectDelay = 500;
let lostBecause = null; // why the server connection went, while reconnecting
let wantedName = null; // the name to log in with again after a reconnect
let me = null; // logged in as
let token = null; // takes the name (and call) back after a dropped connection; never stored
let iceServers = [];
let localStream = null;
let mediaReady = null; // settles once the camera and microphone are started, or refused
let mediaNote = '';
let call = null; // { peer, role, pc, offer, remoteQueue, localQueue, described, restarted, timer }

// ---------------------------------------------------------------- status and controls

function show(state, sentence) {
  ui.status.dataset.state = state;
  ui.status.textContent = sentence;
  const ringing = state === 'ringing';
  ui.accept.hidden = !ringing;
  ui.decline.hidden = !ringing;
  ui.loginForm.hidden = !(state === 'logged-out' || state === 'connecting');
  ui.callForm.hidden = !['idle', 'calling', 'ringing', 'in-call'].includes(state);
  ui.callButton.disabled = state !== 'idle';
  ui.hangUp.disabled = !(state === 'calling' || state === 'in-call' || state === 'ringing'
    || (state === 'reconnecting' && call !== null));
  if (ringing) ui.accept.focus();
}

/** The idle status: who I am, after what just happened. */
function idle(what) {
  const parts = [];
  if (what) parts.push(what);
  parts.push(`Logged in as ${me}.`);
  if (mediaNote) parts.push(mediaNote);
  show('idle', parts.join(' '));
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

function logIn(name) {
  return send(token ? { type: 'login', username: name, token } : { type: 'login', username: name });
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
    if (wantedName) logIn(wantedName);
    else show('logged-out', 'Connected. Choose a name and log in.');
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
      me = null;
      endCall();
      show('logged-out', 'You logged in again on another connection.');
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
      if (reconnecting && message.code === 'unavailable') {
        // Several instances share state through a backplane that is away for a moment.
        show('reconnecting', `${sentence(message.message)} Retrying…`);
        retry(() => logIn(wantedName));
        return;
      }
      wantedName = null;
      show('logged-out', `Login failed: ${sentence(message.message)}`);
      ui.username.focus();
      return;
    }
    me = message.username;
    wantedName = me;
    token = typeof message.token === 'string' ? message.token : null;
    iceServers = Array.isArray(message.iceServers) ? message.iceServers : [];
    if (!mediaReady) mediaReady = startMedia();
    const held = message.resumed === true ? (message.otherUsername ?? null) : undefined;
    if (held !== undefined) {
      // The server held our session: it says which call it still has.
      if (call && held === call.peer) return showCall();
      if (call) endCall(`The call with ${call.peer} ended while the connection was down.`);
      else if (held) send({ type: 'close', otherUsername: held }); // we hung up meanwhile
      else idle();
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
    if (call) endCall('Connection to the server lost: the call ended.');
    else idle();
  },

  resume(message) {
    if (!call || call.peer !== message.username) return;
    show('in-call', `In a call with ${call.peer}.`);
  },

  offer(message) {
    const from = message.username;
    if (call && call.peer === from && call.pc) {
      // Both called each other at once: the peer whose name sorts first gives way, drops its
      // own offer and answers; the other ignores the incoming one and waits for that answer.
      const glare = call.pc.signalingState === 'have-local-offer';
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
    if (!call || !call.pc || call.peer !== message.username) return;
    await call.pc.setRemoteDescription(message.answer);
    await applyQueuedCandidates();
    show('in-call', `In a call with ${call.peer}.`);
  },

  async candidate(message) {
    if (!call || call.peer !== message.username) return;
    if (call.pc && call.pc.remoteDescription) {
      await call.pc.addIceCandidate(message.candidate).catch((err) => console.warn('dialtone: candidate', err));
    } else {
      call.remoteQueue.push(message.candidate);
    }
  },

  decline(message) {
    if (call && call.peer === message.username) endCall(`${message.username} declined the call.`);
  },

  busy(message) {
    if (call && call.peer === message.username) endCall(`${message.username} is busy.`);
  },

  close(message) {
    if (!call || call.peer !== message.username) return;
    endCall(message.reason === 'disconnected'
      ? `Connection to ${message.username} lost: the call ended.`
      : `${message.username} hung up.`);
  },

  error(message) {
    const callEnding = ['unknown-user', 'self-call', 'already-in-call', 'unavailable'];
    if (call && call.role === 'caller' && !call.answered && callEnding.includes(message.code)) {
      endCall(message.code === 'unknown-user' ? `No user named ${call.peer} is logged in.` : sentence(message.message));
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
  if (ui.status.dataset.state === 'idle') idle();
}

function updateToggles() {
  const audio = localStream?.getAudioTracks() ?? [];
  const video = localStream?.getVideoTracks() ?? [];
  ui.mic.disabled = audio.length === 0;
  ui.camera.disabled = video.length === 0;
  ui.local.hidden = video.length === 0; // no empty preview box without a camera
  const muted = audio.length > 0 && audio.every((t) => !t.enabled);
  const dark = video.length > 0 && video.every((t) => !t.enabled);
  ui.mic.setAttribute('aria-pressed', String(muted));
  ui.mic.textContent = muted ? 'Unmute' : 'Mute';
  ui.camera.setAttribute('aria-pressed', String(dark));
  ui.camera.textContent = dark ? 'Camera on' : 'Camera off';
}

function toggle(tracks) {
  const on = tracks.some((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = !on; });
  updateToggles();
}

// ---------------------------------------------------------------- the call

function newCall(peer, role) {
  return { peer, role, pc: null, offer: null, remoteQueue: [], localQueue: [], described: false, answered: false, restarted: false, timer: null };
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

async function acceptOffer(offer, { renegotiation = false } = {}) {
  const current = call;
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
  call.answered = true;
  if (!renegotiation || ui.status.dataset.state === 'calling') show('in-call', `In a call with ${call.peer}.`);
}

function onConnectionState(state) {
  if (state === 'connected') {
    clearTimeout(call.timer);
    call.answered = true;
    // While the server is away the status says so; it says "in a call" again once back.
    if (me && ui.status.dataset.state !== 'in-call') show('in-call', `In a call with ${call.peer}.`);
    return;
  }
  if (state !== 'failed') return;
  if (call.restarted) {
    hangUp(`The connection to ${call.peer} failed: the call ended.`);
    return;
  }
  // One ICE restart, started by the caller; then the call ends with a reason.
  call.restarted = true;
  show('in-call', `The connection to ${call.peer} dropped: trying again…`);
  call.timer = setTimeout(() => {
    if (call && call.pc && call.pc.connectionState !== 'connected') {
      hangUp(`The connection to ${call.peer} failed: the call ended.`);
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

/** Ends the call on our side: the peer connection closed, the remote picture gone. */
function endCall(what = undefined) {
  if (call) {
    clearTimeout(call.timer);
    if (call.pc) call.pc.close();
  }
  call = null;
  ui.remote.srcObject = null;
  if (me) idle(what);
}

/** Ends the call and tells the other side. */
function hangUp(what) {
  if (call) send({ type: 'close', otherUsername: call.peer });
  endCall(what);
}

// ---------------------------------------------------------------- what the person does

ui.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.username.value.trim();
  if (!name) {
    show('logged-out', 'Please enter a name.');
    return;
  }
  wantedName = name;
  if (!send({ type: 'login', username: name })) show('connecting', 'Not connected yet: logging in as soon as the server answers…');
});

ui.callForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const peer = ui.callee.value.trim();
  if (!me || call) return;
  if (!peer) {
    idle('Enter the name of the person to call.');
    return;
  }
  if (peer === me) {
    idle('You cannot call yourself.');
    return;
  }
  placeCall(peer).catch((err) => endCall(`The call could not start (${err.name || err}).`));
});

ui.accept.addEventListener('click', () => {
  if (!call || call.role !== 'callee' || !call.offer) return;
  const offer = call.offer;
  call.offer = null;
  show('in-call', `Connecting to ${call.peer}…`);
  acceptOffer(offer).catch((err) => hangUp(`The call could not start (${err.name || err}).`));
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

ui.mic.addEventListener('click', () => toggle(localStream?.getAudioTracks() ?? []));
ui.camera.addEventListener('click', () => toggle(localStream?.getVideoTracks() ?? []));

updateToggles();
show('connecting', 'Connecting to the server…');
connect();
