// An unmodified Yjs app (yjs + y-websocket) joined to an Accord session, driven by a test.
//
//   node tests/node/ysession.mjs WS_BASE_URL SESSION AGENT
//
// WS_BASE_URL is ws://host:port/{namespace}; y-websocket appends /{session}?agent=AGENT
// (and &token=ACCORD_TOKEN when that is set, for a replica with auth required).
// Commands arrive as JSON lines on stdin, each answered by one JSON line on stdout with
// the same "id"; events (connection status, close codes) are JSON lines without an id.
//   {"id":1,"cmd":"insert","index":0,"text":"hi"}       insert into the Y.Text "text"
//   {"id":2,"cmd":"wait_text","contains":"hi","ms":5000} until the text contains it
//   {"id":3,"cmd":"text"}                                 the current text
//   {"id":4,"cmd":"awareness","state":{...}}              set the local awareness state
//   {"id":5,"cmd":"wait_peer","key":"k","value":"v","ms":5000}
//        until a remote awareness state has state[key] === value ("gone":true: until none has)
//   {"id":6,"cmd":"close"}                                disconnect and exit

import { createInterface } from 'node:readline';

import WebSocket from 'ws';
import { WebsocketProvider } from 'y-websocket';
import * as Y from 'yjs';

const [baseUrl, session, agent] = process.argv.slice(2);
const doc = new Y.Doc();
const text = doc.getText('text');
const provider = new WebsocketProvider(baseUrl, session, doc, {
  // With auth required: the token as a URL parameter (browsers cannot set headers).
  params: { ...(agent ? { agent } : {}), ...(process.env.ACCORD_TOKEN ? { token: process.env.ACCORD_TOKEN } : {}) },
  WebSocketPolyfill: WebSocket, // Node 20 has no global WebSocket
  disableBc: true,
});

const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

provider.on('sync', (synced) => {
  if (synced) emit({ event: 'synced', clientId: doc.clientID });
});
provider.on('connection-close', (event) => {
  emit({ event: 'closed', code: event?.code ?? null, reason: event?.reason ?? '' });
});

// Resolve once check() is true, re-checking on every change listen() reports; reject
// after ms. listen(callback) subscribes and returns the function that unsubscribes.
function until(listen, check, ms) {
  return new Promise((resolve, reject) => {
    const test = () => {
      if (!check()) return;
      clearTimeout(timer);
      stop();
      resolve();
    };
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`timed out after ${ms} ms`));
    }, ms);
    const stop = listen(test);
    test();
  });
}

const onText = (callback) => {
  text.observe(callback);
  return () => text.unobserve(callback);
};
const onAwareness = (callback) => {
  provider.awareness.on('change', callback);
  return () => provider.awareness.off('change', callback);
};

const peerMatches = (key, value) => {
  for (const [clientId, state] of provider.awareness.getStates()) {
    if (clientId !== doc.clientID && state?.[key] === value) return true;
  }
  return false;
};

const peers = () =>
  [...provider.awareness.getStates()]
    .filter(([clientId]) => clientId !== doc.clientID)
    .map(([clientId, state]) => ({ clientId, state }));

async function run(command) {
  switch (command.cmd) {
    case 'insert':
      text.insert(command.index, command.text);
      return { text: text.toString() };
    case 'wait_text':
      await until(onText, () => text.toString().includes(command.contains), command.ms);
      return { text: text.toString() };
    case 'text':
      return { text: text.toString() };
    case 'awareness':
      provider.awareness.setLocalState(command.state);
      return { clientId: doc.clientID };
    case 'wait_peer': {
      const present = () => peerMatches(command.key, command.value);
      const check = command.gone ? () => !present() : present;
      await until(onAwareness, check, command.ms);
      return { peers: peers() };
    }
    case 'close':
      provider.destroy();
      doc.destroy();
      setImmediate(() => process.exit(0));
      return {};
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line);
  try {
    emit({ id: command.id, ok: true, ...(await run(command)) });
  } catch (error) {
    emit({ id: command.id, ok: false, error: String(error), text: text.toString() });
  }
});
