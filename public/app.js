// A minimal dialtone client: log in, call by name, accept or decline, hang up, call again.
// It speaks the tutorial's wire format; ICE servers come from the login reply only.

const $ = (selector) => document.querySelector(selector);
const status = $('#status');

let ws;
let me = null;
let other = null;
let pc = null;
let localStream = null;
let pendingOffer = null;
let queuedCandidates = [];
let iceServers = [];

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
  const ringing = state === 'ringing';
  $('#accept-call').hidden = !ringing;
  $('#decline-call').hidden = !ringing;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${scheme}//${location.host}/ws`);
  ws.onopen = () => {
    if (me) send({ type: 'login', username: me });
    else setStatus('logged-out', 'Connected: choose a name and log in.');
  };
  ws.onclose = () => {
    endCall('connection to the server lost');
    setStatus('reconnecting', 'Reconnecting…');
    setTimeout(connect, 2000);
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    handlers[message.type]?.(message);
  };
}

const handlers = {
  async login(message) {
    if (!message.success) {
      me = null;
      setStatus('logged-out', `Login failed: ${message.message}`);
      return;
    }
    me = message.username;
    iceServers = message.iceServers;
    setStatus('idle', `Logged in as ${me}.`);
    if (!localStream) {
      try {
        localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        $('#local').srcObject = localStream;
      } catch (err) {
        setStatus('idle', `Logged in as ${me}, without camera or microphone (${err.name}).`);
      }
    }
  },
  offer(message) {
    if (pc && other === message.username) {
      renegotiate(message.offer);
      return;
    }
    other = message.username;
    pendingOffer = message.offer;
    setStatus('ringing', `${other} is calling you.`);
  },
  async answer(message) {
    if (!pc) return;
    await pc.setRemoteDescription(message.answer);
    await flushCandidates();
    setStatus('in-call', `In a call with ${other}.`);
  },
  async candidate(message) {
    if (pc && pc.remoteDescription) await pc.addIceCandidate(message.candidate).catch(() => {});
    else queuedCandidates.push(message.candidate);
  },
  decline(message) { endCall(`${message.username} declined the call.`); },
  busy(message) { endCall(`${message.username} is busy.`); },
  close(message) {
    endCall(message.reason === 'disconnected'
      ? `Connection to ${message.username} lost.`
      : `${message.username} hung up.`);
  },
  error(message) {
    if (message.code === 'unknown-user') endCall(message.message);
    else console.warn('dialtone:', message.code, message.message);
  },
};

function newPeerConnection() {
  pc = new RTCPeerConnection({ iceServers });
  pc.onicecandidate = (event) => {
    if (event.candidate) send({ type: 'candidate', candidate: event.candidate, otherUsername: other });
  };
  pc.ontrack = (event) => { $('#remote').srcObject = event.streams[0]; };
  localStream?.getTracks().forEach((track) => pc.addTrack(track, localStream));
  if (!localStream) {
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
  }
}

async function flushCandidates() {
  for (const candidate of queuedCandidates.splice(0)) {
    await pc.addIceCandidate(candidate).catch(() => {});
  }
}

async function renegotiate(offer) {
  await pc.setRemoteDescription(offer);
  await pc.setLocalDescription();
  send({ type: 'answer', answer: pc.localDescription, otherUsername: other });
}

function endCall(reason) {
  if (pc) { pc.close(); pc = null; }
  $('#remote').srcObject = null;
  pendingOffer = null;
  queuedCandidates = [];
  other = null;
  const sentence = reason && !/[.!?]$/.test(reason) ? `${reason}.` : reason;
  if (me) setStatus('idle', sentence ? `${sentence} Logged in as ${me}.` : `Logged in as ${me}.`);
}

$('button#login').addEventListener('click', () => {
  const name = $('input#username').value.trim();
  if (!name) { setStatus('logged-out', 'Please enter a name.'); return; }
  me = name;
  send({ type: 'login', username: name });
});

$('button#call').addEventListener('click', async () => {
  const name = $('input#username-to-call').value.trim();
  if (!me || !name || pc) return;
  other = name;
  newPeerConnection();
  await pc.setLocalDescription(await pc.createOffer());
  send({ type: 'offer', offer: pc.localDescription, otherUsername: other });
  setStatus('calling', `Calling ${other}…`);
});

$('button#accept-call').addEventListener('click', async () => {
  if (!pendingOffer) return;
  newPeerConnection();
  await pc.setRemoteDescription(pendingOffer);
  pendingOffer = null;
  await flushCandidates();
  await pc.setLocalDescription(await pc.createAnswer());
  send({ type: 'answer', answer: pc.localDescription, otherUsername: other });
  setStatus('in-call', `In a call with ${other}.`);
});

$('button#decline-call').addEventListener('click', () => {
  send({ type: 'decline', otherUsername: other });
  endCall('Call declined.');
});

$('button#close-call').addEventListener('click', () => {
  if (other) send({ type: 'close', otherUsername: other });
  endCall('Call ended.');
});

connect();
