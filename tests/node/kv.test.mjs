// Cross-language check of the accord.v1 KV contract from a Node gRPC client.
//
// Needs a running coordinator: ACCORD_ADDR=host:port[,host:port...] (the first is used);
// ACCORD_TOKEN when it requires a token.
// Run from the repo root:  ACCORD_ADDR=127.0.0.1:50051 node --test tests/node/

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../proto');
const ADDR = (process.env.ACCORD_ADDR ?? '').split(',')[0].trim();
const NAMESPACE = process.env.ACCORD_NAMESPACE || `node-${randomBytes(6).toString('hex')}`;
const AGENT = 'node-agent';
// With auth required: a token whose principal may act as AGENT, sent on every call.
const TOKEN = process.env.ACCORD_TOKEN ?? '';

// Every wait is bounded so that a broken service fails the test instead of hanging it.
const CALL_TIMEOUT_MS = 5_000;
const WATCH_WAIT_MS = 10_000;
const TEST_TIMEOUT_MS = 30_000;

const LOADER_OPTIONS = {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

// The error payload types as protobufjs types, to decode the status trailer and its Anys:
// google.rpc's published files, shipped in proto/google/rpc for other languages.
function loadDetailTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => resolve(PROTO_DIR, target);
  // google/protobuf/*.proto come bundled with protobufjs.
  root.loadSync(
    ['google/protobuf/any.proto', 'google/rpc/error_details.proto', 'accord/v1/kv.proto'],
    { keepCase: true },
  );
  return root.resolveAll();
}

const TO_OBJECT = { longs: String, enums: String, defaults: true, oneofs: true };

// Decode the grpc-status-details-bin trailer into { code, message, details: [{typeName, value}] }.
function statusDetails(err, root) {
  const raw = err.metadata?.get('grpc-status-details-bin') ?? [];
  assert.equal(raw.length, 1, 'the error carries one grpc-status-details-bin trailer');
  const statusType = root.lookupType('google.rpc.Status');
  const status = statusType.toObject(statusType.decode(raw[0]), TO_OBJECT);
  const details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    // Unknown detail types are kept, undecoded.
    const type = root.lookup(typeName);
    const value = type instanceof protobuf.Type ? type.toObject(type.decode(any.value), TO_OBJECT) : null;
    return { typeName, value };
  });
  return { code: status.code, message: status.message, details };
}

function deadline(ms = CALL_TIMEOUT_MS) {
  return new Date(Date.now() + ms);
}

function identity() {
  const md = new grpc.Metadata();
  md.set('accord-namespace', NAMESPACE);
  md.set('accord-agent-id', AGENT);
  if (TOKEN) md.set('authorization', `Bearer ${TOKEN}`);
  return md;
}

// Promise wrapper for a unary call; resolves with the response or rejects with the ServiceError.
function unary(client, method, request) {
  return new Promise((ok, fail) => {
    client[method](request, identity(), { deadline: deadline() }, (err, res) =>
      err ? fail(err) : ok(res),
    );
  });
}

// Pulls messages off a server stream one at a time, each pull bounded by a timeout.
class StreamReader {
  constructor(stream) {
    this.queue = [];
    this.waiters = [];
    this.failure = null;
    stream.on('data', (msg) => this.#push({ msg }));
    stream.on('error', (err) => this.#push({ err }));
    stream.on('end', () => this.#push({ err: new Error('stream ended') }));
  }

  #push(item) {
    if (item.err && !this.failure) this.failure = item.err;
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.queue.push(item);
  }

  next(timeoutMs = WATCH_WAIT_MS) {
    const item = this.queue.shift();
    if (item) return item.err ? Promise.reject(item.err) : Promise.resolve(item.msg);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((ok, fail) => {
      const waiter = (got) => {
        clearTimeout(timer);
        if (got.err) fail(got.err);
        else ok(got.msg);
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        fail(new Error(`no stream message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }
}

function uniqueKey(name) {
  return `node-test/${name}-${randomBytes(4).toString('hex')}`;
}

describe('accord.v1.KV from Node', { timeout: TEST_TIMEOUT_MS * 3 }, () => {
  let client;
  let detailTypes;

  before(async () => {
    assert.ok(ADDR, 'set ACCORD_ADDR to a running coordinator, e.g. 127.0.0.1:50051');
    const definition = protoLoader.loadSync(
      ['accord/v1/kv.proto', 'accord/v1/common.proto'],
      LOADER_OPTIONS,
    );
    const accord = grpc.loadPackageDefinition(definition).accord.v1;
    detailTypes = loadDetailTypes();
    client = new accord.KV(ADDR, grpc.credentials.createInsecure());
    await new Promise((ok, fail) =>
      client.waitForReady(deadline(), (err) => (err ? fail(err) : ok())),
    );
  });

  after(() => client?.close());

  test('conditional writes: must_not_exist, then CAS on mod_revision', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = uniqueKey('cas');

    // Creating a key that does not exist succeeds.
    const first = await unary(client, 'Put', {
      key,
      value: Buffer.from('one'),
      precondition: { must_not_exist: true },
    });
    assert.equal(first.kv.key, key);
    assert.equal(first.kv.version, '1');
    assert.equal(first.kv.value.toString(), 'one');
    assert.equal(first.kv.written_by.agent_id, AGENT);
    const firstRev = first.kv.mod_revision;
    assert.ok(BigInt(firstRev) > 0n, 'mod_revision is positive');

    // Creating it again is refused, and the details say what is there now.
    const err = await unary(client, 'Put', {
      key,
      value: Buffer.from('again'),
      precondition: { must_not_exist: true },
    }).then(
      () => assert.fail('a second must_not_exist Put should fail'),
      (e) => e,
    );
    assert.equal(err.code, 9 /* FAILED_PRECONDITION */, `got ${err.code}: ${err.details}`);
    const status = statusDetails(err, detailTypes);
    assert.equal(status.code, grpc.status.FAILED_PRECONDITION);
    const info = status.details.find((d) => d.typeName === 'google.rpc.ErrorInfo');
    assert.ok(info, `ErrorInfo among details: ${status.details.map((d) => d.typeName)}`);
    assert.deepEqual([info.value.domain, info.value.reason], ['accord.v1', 'CONDITION_FAILED']);
    const failure = status.details.find((d) => d.typeName === 'accord.v1.ConditionFailure');
    assert.ok(failure, `ConditionFailure among details: ${status.details.map((d) => d.typeName)}`);
    assert.equal(failure.value.key, key);
    assert.equal(failure.value.exists, true);
    assert.equal(failure.value.current_mod_revision, firstRev);
    assert.equal(failure.value.current_version, '1');

    // A compare-and-swap against the first write's mod_revision succeeds.
    const second = await unary(client, 'Put', {
      key,
      value: Buffer.from('two'),
      precondition: { mod_revision: firstRev },
    });
    assert.equal(second.kv.version, '2');
    assert.equal(second.kv.value.toString(), 'two');
    assert.ok(BigInt(second.kv.mod_revision) > BigInt(firstRev), 'mod_revision advanced');
    assert.equal(second.kv.create_revision, first.kv.create_revision);
  });

  test('a large current value is left out of CONDITION_FAILED, with where to read it', { timeout: TEST_TIMEOUT_MS }, async () => {
    // Details travel in trailers, which grpc-js (like every standard client) caps at 8-16 KiB.
    const key = uniqueKey('big');
    const value = Buffer.alloc(64 * 1024, 'v');
    const first = await unary(client, 'Put', { key, value });
    const err = await unary(client, 'Put', {
      key,
      value: Buffer.from('mine'),
      precondition: { must_not_exist: true },
      return_current_on_failure: true,
    }).then(
      () => assert.fail('must_not_exist on an existing key should fail'),
      (e) => e,
    );
    assert.equal(err.code, 9 /* FAILED_PRECONDITION */, `got ${err.code}: ${err.details}`);
    const status = statusDetails(err, detailTypes);
    const failure = status.details.find((d) => d.typeName === 'accord.v1.ConditionFailure');
    assert.ok(failure, `ConditionFailure among details: ${status.details.map((d) => d.typeName)}`);
    assert.equal(failure.value.current_mod_revision, first.kv.mod_revision);
    assert.equal(failure.value.current_value_omitted, true);
    assert.equal(failure.value.current_value_size, String(value.length));
    // The value as it was when the check failed.
    const read = await unary(client, 'Get', { key, revision: failure.value.revision });
    assert.equal(read.kv.mod_revision, first.kv.mod_revision);
    assert.ok(read.kv.value.equals(value), 'the value read back is the one written');
  });

  test('List pages of large values fit a default client', { timeout: TEST_TIMEOUT_MS }, async () => {
    const prefix = uniqueKey('pages') + '/';
    const keys = [];
    for (let i = 0; i < 20; i++) {
      keys.push(`${prefix}${String(i).padStart(2, '0')}`);
      await unary(client, 'Put', { key: keys[i], value: Buffer.alloc(256 * 1024, i) });
    }
    const listed = [];
    let page_token = '';
    do {
      const page = await unary(client, 'List', { prefix, limit: 20, page_token });
      assert.ok(page.kvs.length < 20, 'twenty 256 KiB values take more than one page');
      listed.push(...page.kvs.map((kv) => kv.key));
      page_token = page.next_page_token;
    } while (page_token);
    assert.deepEqual(listed, keys);
  });

  test('watch delivers puts in order', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = uniqueKey('watch');
    const stream = client.Watch({ key, start_revision: 0 }, identity(), {
      deadline: deadline(TEST_TIMEOUT_MS),
    });
    // Cancelling ends the stream with CANCELLED; that is expected, not a failure.
    const reader = new StreamReader(stream);
    try {
      // The first response says the watch is established: no events, a place to resume from.
      const hello = await reader.next();
      assert.equal(hello.events.length, 0, 'first watch response has no events');
      assert.ok(BigInt(hello.resume_revision) > 0n, 'first watch response has a resume_revision');

      const put1 = await unary(client, 'Put', { key, value: Buffer.from('v1') });
      const put2 = await unary(client, 'Put', { key, value: Buffer.from('v2') });

      // The two events may arrive in one response or two; skip progress-only responses.
      const events = [];
      while (events.length < 2) {
        const res = await reader.next();
        events.push(...res.events);
      }
      assert.equal(events.length, 2, 'exactly two events');
      assert.deepEqual(
        events.map((e) => [e.type, e.kv.key, e.kv.value.toString(), e.kv.mod_revision]),
        [
          ['TYPE_PUT', key, 'v1', put1.kv.mod_revision],
          ['TYPE_PUT', key, 'v2', put2.kv.mod_revision],
        ],
      );
      assert.ok(BigInt(events[1].kv.mod_revision) > BigInt(events[0].kv.mod_revision));
      assert.equal(events[0].kv.written_by.agent_id, AGENT);
    } finally {
      stream.cancel();
    }
  });
});
