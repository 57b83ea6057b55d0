// Many unmodified Yjs apps (yjs + y-websocket) in one process, all in one session, each
// with an awareness state; prints one JSON line when every app sees every other's state.
//
//   node tests/node/ycrowd.mjs WS_BASE_URL SESSION AGENT COUNT [TIMEOUT_MS]
//
// Then stays connected until stdin closes (so a test can measure the replica meanwhile).
// Apps connect from 127.0.0.2, 127.0.0.3, ... (100 each): a replica caps sockets per address.

import WebSocket from 'ws';
import { WebsocketProvider } from 'y-websocket';
import * as Y from 'yjs';

const [baseUrl, session, agent, countText, timeoutText] = process.argv.slice(2);
const count = Number(countText);
const timeoutMs = Number(timeoutText ?? 120000);
const started = Date.now();
// ws with a given source address, as y-websocket constructs it: new Polyfill(url, protocols).
const fromAddress = (localAddress) =>
  class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { localAddress });
    }
  };
const providers = [];
for (let i = 0; i < count; i++) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(baseUrl, session, doc, {
    params: { agent, ...(process.env.ACCORD_TOKEN ? { token: process.env.ACCORD_TOKEN } : {}) },
    WebSocketPolyfill: fromAddress(`127.0.0.${2 + Math.floor(i / 100)}`),
    disableBc: true,
  });
  provider.awareness.setLocalState({ n: i, user: `${agent}-${i}` });
  providers.push(provider);
}
const peersSeen = (p) => {
  let seen = 0;
  for (const [id, state] of p.awareness.getStates()) {
    if (id !== p.awareness.clientID && state && state.user) seen++;
  }
  return seen;
};
const timer = setInterval(() => {
  const least = Math.min(...providers.map(peersSeen));
  if (least >= count - 1) {
    clearInterval(timer);
    process.stdout.write(`${JSON.stringify({ event: 'everyone', ms: Date.now() - started })}\n`);
  } else if (Date.now() - started > timeoutMs) {
    clearInterval(timer);
    process.stdout.write(`${JSON.stringify({ event: 'timeout', least })}\n`);
  }
}, 200);
process.stdin.on('end', () => {
  for (const p of providers) p.destroy();
  process.exit(0);
});
process.stdin.resume();
