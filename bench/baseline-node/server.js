// The tutorial's signaling server, as the tutorial builds it: express + express-ws + ws, a
// `users` object keyed by name, JSON.parse on every message, the same relay semantics
// (login, offer, answer, candidate, close). Only what a benchmark needs was added: the port
// from PORT, TLS when TLS_CERT/TLS_KEY are set (the tutorial ran behind Heroku's TLS), and
// the guards the tutorial lacks where their absence would crash the process mid-benchmark.
const fs = require('fs');
const http = require('http');
const https = require('https');
const express = require('express');

const app = express();
const server = process.env.TLS_CERT
  ? https.createServer({ cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }, app)
  : http.createServer(app);
require('express-ws')(app, server);

const users = {};

const sendTo = (ws, message) => {
  ws.send(JSON.stringify(message));
};

app.ws('/', (ws) => {
  ws.on('message', (message) => {
    let data = null;
    try {
      data = JSON.parse(message);
    } catch (err) {
      console.error('Invalid JSON', err);
      data = {};
    }
    switch (data.type) {
      case 'login':
        if (users[data.username]) {
          sendTo(ws, { type: 'login', success: false });
        } else {
          users[data.username] = ws;
          ws.username = data.username;
          sendTo(ws, { type: 'login', success: true });
        }
        break;
      case 'offer':
        if (users[data.otherUsername] != null) {
          ws.otherUsername = data.otherUsername;
          sendTo(users[data.otherUsername], { type: 'offer', offer: data.offer, username: ws.username });
        }
        break;
      case 'answer':
        if (users[data.otherUsername] != null) {
          ws.otherUsername = data.otherUsername;
          sendTo(users[data.otherUsername], { type: 'answer', answer: data.answer });
        }
        break;
      case 'candidate':
        if (users[data.otherUsername] != null) {
          sendTo(users[data.otherUsername], { type: 'candidate', candidate: data.candidate });
        }
        break;
      case 'close':
        if (users[data.otherUsername] != null) {
          users[data.otherUsername].otherUsername = null;
          sendTo(users[data.otherUsername], { type: 'close' });
        }
        break;
      default:
        sendTo(ws, { type: 'error', message: 'Command not found: ' + data.type });
        break;
    }
  });

  ws.on('close', () => {
    if (ws.username) {
      delete users[ws.username];
      if (ws.otherUsername && users[ws.otherUsername]) {
        users[ws.otherUsername].otherUsername = null;
        sendTo(users[ws.otherUsername], { type: 'close' });
      }
    }
  });
});

app.use(express.static('../../public'));

const port = Number(process.env.PORT || 8080);
server.listen(port, '127.0.0.1', () => {
  console.log(`Listening on port ${port}`);
});
