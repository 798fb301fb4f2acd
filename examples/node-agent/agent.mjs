#!/usr/bin/env node
// A worker for agentdrill's live drills, in plain Node 20 (built-in fetch,
// http and fs; no npm packages), written from the wire contract of the
// fakes: a Stripe-style form-encoded payment API with Idempotency-Key and
// search, a Resend-style email API with tags and list-by-tag, and the
// Anthropic Messages API (with an OpenAI-compatible self-hosted fallback).
//
//   node examples/node-agent/agent.mjs --serve          # as a live drill's worker
//   node examples/node-agent/agent.mjs --job 41         # one job, against `agentdrill serve`
//
// Safeguards (README.md tells why each exists):
//   - jobs are journalled in AGENTDRILL_STATE_DIR before the 202;
//   - every job runs under a lease with a fencing token (files in the state
//     folder, shared by the process's replicas); a holder checks its lease
//     before every side effect and every write, and renews it every third
//     of AGENTDRILL_LEASE_MS; an expired lease is taken over by any replica;
//   - the idempotency key of a side effect is derived from (job, step) and
//     recorded in the checkpoint before the call leaves;
//   - a call whose outcome is unknown (resumed after a crash, or its answer
//     lost on the wire) is reconciled with the API (payment search by
//     metadata, email list by tag) before it is sent again, with the same key.
// Anti-pattern switches a drill must catch:
//   --key-from-clock         the key is made from the clock when the call is sent
//   --no-reconcile           an unknown outcome is re-sent without asking the API
//   --checkpoint-after-step  nothing durable before a tool call, only after it

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

// ----------------------------------------------------------------- settings

const FLAGS = {
  serve: false,
  keyFromClock: false,
  noReconcile: false,
  checkpointAfterStep: false,
  fallback: false,
  job: 41,
  workflow: 'book_flight',
  concurrency: 4,
};

function parseFlags(argv) {
  const named = {
    '--serve': 'serve',
    '--key-from-clock': 'keyFromClock',
    '--no-reconcile': 'noReconcile',
    '--checkpoint-after-step': 'checkpointAfterStep',
    '--fallback': 'fallback',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (named[a]) FLAGS[named[a]] = true;
    else if (a === '--job') FLAGS.job = Number(argv[++i]);
    else if (a === '--workflow') FLAGS.workflow = argv[++i];
    else if (a === '--concurrency') FLAGS.concurrency = Number(argv[++i]);
    else if (a === '--help' || a === '-h') {
      console.log('usage: agent.mjs [--serve] [--job N --workflow NAME] [--fallback] [--concurrency N]\n' +
        '                 [--key-from-clock] [--no-reconcile] [--checkpoint-after-step]');
      process.exit(0);
    } else {
      console.error(`agent: unknown argument ${a} (try --help)`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(FLAGS.job) || FLAGS.job < 0) fail('--job needs a whole number');
  if (!(FLAGS.concurrency >= 1)) fail('--concurrency needs a number >= 1');
}

function fail(msg) {
  console.error(`agent: ${msg}`);
  process.exit(2);
}

/** A variable of the process contract, or a clear exit naming it. */
function contract(name, fallback) {
  const v = process.env[name];
  if (v) return v;
  if (fallback !== undefined) return fallback;
  fail(`${name} is not set: run under \`agentdrill run\`, or export what \`agentdrill serve\` prints`);
}

// ------------------------------------------------------------------- wire

class HttpError extends Error {
  constructor(method, url, status, body, headers) {
    super(`${method} ${url} answered ${status}: ${typeof body === 'string' ? body : JSON.stringify(body)}`);
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

/** One HTTP exchange; JSON in and out unless `body` is a string. */
async function exchange(method, url, { headers = {}, body, timeoutMs = 15000 } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeoutMs) };
  if (body !== undefined) {
    if (typeof body === 'string') init.body = body;
    else {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON: keep the text */ }
  if (!res.ok) throw new HttpError(method, url, res.status, parsed, res.headers);
  return { body: parsed, headers: res.headers };
}

/** No answer came back (connection refused, reset, dropped, timed out): the outcome is unknown. */
function noAnswer(e) {
  return !(e instanceof HttpError);
}

/** Worth sending again: no answer, a key in use (409), throttled (429) or a server error. */
function transient(e) {
  return noAnswer(e) || e.status === 409 || e.status === 429 || e.status >= 500;
}

/** How long to wait before attempt `n + 1`: the server's retry-after, or exponential with jitter. */
function backoffMs(e, n) {
  const h = e instanceof HttpError ? e.headers : null;
  const ms = Number(h?.get('retry-after-ms'));
  if (ms > 0) return Math.min(ms, 5000);
  const s = Number(h?.get('retry-after'));
  if (s > 0) return Math.min(s * 1000, 5000);
  return Math.min(100 * 2 ** n, 2000) * (0.5 + Math.random() / 2);
}

/** Stripe's form encoding: nested objects as `a[b]=c`. */
function formEncode(obj, prefix, out = new URLSearchParams()) {
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null) continue;
    const name = prefix ? `${prefix}[${k}]` : k;
    if (typeof v === 'object') formEncode(v, name, out);
    else out.append(name, String(v));
  }
  return out;
}

const stripe = {
  base: () => contract('STRIPE_API_BASE'),
  headers: (key) => ({
    authorization: `Bearer ${process.env.STRIPE_API_KEY || 'sk_test_node_agent'}`,
    'content-type': 'application/x-www-form-urlencoded',
    ...(key ? { 'idempotency-key': key } : {}),
  }),
  async post(pathname, params, key) {
    const r = await exchange('POST', stripe.base() + pathname,
      { headers: stripe.headers(key), body: formEncode(params).toString() });
    return r.body;
  },
  async search(query) {
    const q = new URLSearchParams({ query }).toString();
    const r = await exchange('GET', `${stripe.base()}/v1/payment_intents/search?${q}`, { headers: stripe.headers() });
    return r.body.data || [];
  },
};

const email = {
  base: () => contract('EMAIL_API_URL'),
  headers: { authorization: `Bearer ${process.env.RESEND_API_KEY || 're_node_agent'}` },
  async send(args, key) {
    const r = await exchange('POST', `${email.base()}/emails`, {
      headers: { ...email.headers, 'idempotency-key': key },
      body: { from: 'node-agent@example.com', ...args },
    });
    return r.body;
  },
  async byTag(name, value) {
    const q = new URLSearchParams({ tag: `${name}:${value}` }).toString();
    const r = await exchange('GET', `${email.base()}/emails?${q}`, { headers: email.headers });
    return r.body.data || [];
  },
};

const qdrant = {
  async call(method, pathname, body) {
    return (await exchange(method, contract('QDRANT_URL') + pathname, { body })).body;
  },
  async exists(c) {
    return (await qdrant.call('GET', `/collections/${c}/exists`)).result.exists;
  },
};

// ------------------------------------------------------------------ model

let TOOLS = null;

/** The tool declarations (Anthropic's shape), from the control API. */
async function tools() {
  if (TOOLS) return TOOLS;
  for (let n = 0; ; n++) {
    try {
      TOOLS = (await exchange('GET', `${contract('AGENTDRILL_CONTROL_URL')}/tools`)).body;
      return TOOLS;
    } catch (e) {
      if (n >= 20) throw e;
      await sleep(100);
    }
  }
}

/** A model answer: `{ use }` (one tool call) or `{ answer }` (the final text), and the assistant blocks. */
function readAnthropic(msg) {
  const blocks = (msg.content || []).filter((b) => b.type === 'text' || b.type === 'tool_use')
    .map((b) => (b.type === 'text' ? { type: 'text', text: b.text } :
      { type: 'tool_use', id: b.id, name: b.name, input: b.input }));
  const uses = blocks.filter((b) => b.type === 'tool_use');
  if (msg.stop_reason !== 'tool_use' || uses.length === 0) {
    return { answer: blocks.filter((b) => b.type === 'text').map((b) => b.text).join('') };
  }
  if (uses.length > 1) throw new Error(`the model asked for ${uses.length} tools at once; this agent runs one per turn`);
  return { use: uses[0], blocks };
}

async function anthropicTurn(messages) {
  const r = await exchange('POST', `${contract('ANTHROPIC_BASE_URL')}/v1/messages`, {
    headers: { 'x-api-key': process.env.ANTHROPIC_API_KEY || 'sk-ant-node-agent', 'anthropic-version': '2023-06-01' },
    body: { model: 'claude-sonnet', max_tokens: 1024, tools: (await tools()).anthropic, messages },
    timeoutMs: 30000,
  });
  return readAnthropic(r.body);
}

/** The conversation (kept in Anthropic's shape) as Chat Completions messages. */
function chatMessages(messages) {
  const out = [];
  for (const m of messages) {
    if (typeof m.content === 'string') {
      out.push({ role: m.role, content: m.content });
      continue;
    }
    const text = m.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
    const calls = m.content.filter((b) => b.type === 'tool_use').map((b) => ({
      id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(b.input) },
    }));
    if (m.role === 'assistant') out.push({ role: 'assistant', content: text || null, ...(calls.length ? { tool_calls: calls } : {}) });
    for (const b of m.content.filter((x) => x.type === 'tool_result')) {
      out.push({ role: 'tool', tool_call_id: b.tool_use_id, content: b.content });
    }
  }
  return out;
}

/** One turn on the self-hosted OpenAI-compatible fallback. */
async function fallbackTurn(messages) {
  const r = await exchange('POST', `${contract('AGENTDRILL_LOCAL_MODEL_URL')}/chat/completions`, {
    headers: { authorization: 'Bearer local' },
    body: { model: 'local', messages: chatMessages(messages), tools: (await tools()).openai },
    timeoutMs: 30000,
  });
  const choice = r.body.choices[0];
  const calls = choice.message.tool_calls || [];
  if (choice.finish_reason !== 'tool_calls' || calls.length === 0) return { answer: choice.message.content || '' };
  if (calls.length > 1) throw new Error(`the fallback asked for ${calls.length} tools at once; this agent runs one per turn`);
  const c = calls[0];
  const use = { type: 'tool_use', id: c.id, name: c.function.name, input: JSON.parse(c.function.arguments) };
  return { use, blocks: [use] };
}

/** The next turn: Anthropic with retries; with --fallback, the self-hosted model once Anthropic keeps failing. */
async function modelTurn(messages, lease) {
  const attempts = FLAGS.fallback ? 2 : 6;
  for (let n = 0; ; n++) {
    lease.check();
    try {
      return await anthropicTurn(messages);
    } catch (e) {
      if (!transient(e)) throw e;
      if (n + 1 >= attempts) {
        if (FLAGS.fallback) return fallbackTurn(messages);
        throw e;
      }
      await sleep(backoffMs(e, n));
    }
  }
}

// ------------------------------------------------------------------ tools

/** The script's step of a tool call (payment metadata, or the email's `step` tag). */
function stepOf(name, input) {
  if (input.metadata?.step !== undefined) return String(input.metadata.step);
  const tag = (input.tags || []).find((t) => t.name === 'step');
  return tag ? String(tag.value) : null;
}

/** The idempotency key of a call: from (job, step) — or, the anti-pattern, from the clock now. */
function keyFor(job, name, input) {
  if (FLAGS.keyFromClock) return `node-${job}-${name}-${process.hrtime.bigint()}-${Date.now()}`;
  return `node-job-${job}-step-${stepOf(name, input) ?? name}-${name}`;
}

/** Sends one tool call with `key`; returns the tool result's text. */
async function perform(name, input, key) {
  switch (name) {
    case 'search':
      return `found 3 results for "${input.query}"`;
    case 'charge_card': {
      const pi = await stripe.post('/v1/payment_intents', {
        amount: input.amount, currency: input.currency, confirm: true, payment_method: 'pm_card_visa',
        description: input.description, metadata: input.metadata,
      }, key);
      return `payment ${pi.id}: ${pi.status}, ${pi.amount} ${pi.currency}`;
    }
    case 'refund_payment': {
      const re = await stripe.post('/v1/refunds',
        { payment_intent: input.payment_intent, amount: input.amount, metadata: input.metadata }, key);
      return `refund ${re.id}: ${re.amount}`;
    }
    case 'send_email':
      return `email ${(await email.send(input, key)).id} sent`;
    case 'memory_write': {
      const c = input.collection;
      if (!(await qdrant.exists(c))) {
        try {
          await qdrant.call('PUT', `/collections/${c}`, { vectors: { size: input.vector.length, distance: 'Cosine' } });
        } catch (e) {
          // Another job (or replica) made it meanwhile: that is what we wanted.
          if (!(e instanceof HttpError) || !(await qdrant.exists(c))) throw e;
        }
      }
      await qdrant.call('PUT', `/collections/${c}/points?wait=true`,
        { points: [{ id: input.id, vector: input.vector, payload: input.payload }] });
      return 'stored';
    }
    case 'memory_read': {
      const c = input.collection;
      if (!(await qdrant.exists(c))) return '[]';
      const r = await qdrant.call('POST', `/collections/${c}/points/query`,
        { query: input.vector, limit: input.limit, with_payload: true });
      return JSON.stringify(r.result.points.map((p) => p.payload));
    }
    default:
      throw new Error(`unknown tool ${name}`);
  }
}

/** Asks the API whether a call with an unknown outcome happened; its result, or null. */
async function reconcile(job, name, input) {
  const step = stepOf(name, input);
  if (step === null) return null;
  if (name === 'charge_card') {
    const found = await stripe.search(`metadata['job_id']:'job-${job}' AND metadata['step']:'${step}'`);
    const pi = found[0];
    return pi ? `payment ${pi.id}: ${pi.status}, ${pi.amount} ${pi.currency}` : null;
  }
  if (name === 'refund_payment') {
    const q = new URLSearchParams({ payment_intent: input.payment_intent }).toString();
    const r = await exchange('GET', `${stripe.base()}/v1/refunds?${q}`, { headers: stripe.headers() });
    const re = (r.body.data || []).find((x) => x.metadata?.step === step);
    return re ? `refund ${re.id}: ${re.amount}` : null;
  }
  if (name === 'send_email') {
    const sent = await email.byTag('job_id', `job-${job}`);
    const e = sent.find((m) => (m.tags || []).some((t) => t.name === 'step' && String(t.value) === step));
    return e ? `email ${e.id} sent` : null;
  }
  return null;
}

/**
 * Brings one tool call to a known outcome. `unknown`: it may already have
 * happened (resumed from a checkpoint), so the API is asked first. A send
 * that gets no answer is unknown too; a refusal that is safe to repeat is
 * repeated with the same key.
 */
async function settle(job, call, lease, unknown) {
  for (let n = 0; ; n++) {
    if (unknown && !FLAGS.noReconcile) {
      lease.check();
      const found = await reconcile(job, call.name, call.input);
      if (found !== null) {
        console.log(`job-${job}: ${call.name} (step ${stepOf(call.name, call.input)}) had happened; not sent again`);
        return found;
      }
    }
    // A key made in the agent from the clock is made again for every send.
    const key = FLAGS.keyFromClock ? keyFor(job, call.name, call.input) : call.key;
    lease.check();
    try {
      return await perform(call.name, call.input, key);
    } catch (e) {
      if (!transient(e) || n >= 5) throw e;
      unknown = unknown || noAnswer(e);
      await sleep(backoffMs(e, n));
    }
  }
}

// ------------------------------------------------------------------ state

class LeaseLost extends Error {}

/** Durable state under AGENTDRILL_STATE_DIR, shared by the process's replicas. */
class State {
  constructor(root) {
    this.root = root;
    for (const d of ['jobs', 'checkpoints', 'done', 'leases']) fs.mkdirSync(path.join(root, d), { recursive: true });
  }

  file(kind, job) {
    return path.join(this.root, kind, `${job}.json`);
  }

  /**
   * Writes atomically and durably (temp file, fsync, rename, fsync of the
   * folder), off the event loop: an fsync takes milliseconds, and the other
   * jobs go on meanwhile.
   */
  async put(kind, job, value) {
    const to = this.file(kind, job);
    const tmp = `${to}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    const f = await fsp.open(tmp, 'w');
    try {
      await f.writeFile(JSON.stringify(value));
      await f.sync();
    } finally {
      await f.close();
    }
    await fsp.rename(tmp, to);
    const dir = await fsp.open(path.dirname(to), 'r');
    try { await dir.sync(); } finally { await dir.close(); }
  }

  get(kind, job) {
    try {
      return JSON.parse(fs.readFileSync(this.file(kind, job), 'utf8'));
    } catch (e) {
      if (e.code === 'ENOENT') return null;
      throw e;
    }
  }

  /** Jobs journalled and not done. */
  open() {
    const names = fs.readdirSync(path.join(this.root, 'jobs')).filter((n) => /^\d+\.json$/.test(n));
    return names.map((n) => Number(n.slice(0, -5))).filter((j) => this.get('done', j) === null).sort((a, b) => a - b);
  }

  /** The newest lease of `job`: `{ token, holder, slot, expires_ms }`, or null. Tokens only grow. */
  lease(job) {
    const prefix = `${job}.`;
    let token = 0;
    for (const n of fs.readdirSync(path.join(this.root, 'leases'))) {
      if (n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length))) token = Math.max(token, Number(n.slice(prefix.length)));
    }
    if (token === 0) return null;
    try {
      return { token, ...JSON.parse(fs.readFileSync(path.join(this.root, 'leases', `${job}.${token}`), 'utf8')) };
    } catch {
      // Created, not written yet: held by whoever created it.
      return { token, holder: '?', slot: '?', expires_ms: Date.now() + LEASE_MS };
    }
  }

  /** Takes `job` under a new fencing token (exclusive create), or null when someone else holds it. */
  acquire(job, me) {
    const cur = this.lease(job);
    // A lease of this replica slot from an earlier incarnation is free: the
    // supervisor restarts a slot only once its process group is dead.
    const free = !cur || cur.expires_ms <= Date.now() || (cur.slot === me.slot && cur.holder !== me.holder);
    if (!free) return null;
    const token = (cur?.token ?? 0) + 1;
    const file = path.join(this.root, 'leases', `${job}.${token}`);
    let fd;
    try {
      fd = fs.openSync(file, 'wx');
    } catch (e) {
      if (e.code === 'EEXIST') return null;
      throw e;
    }
    const expires_ms = Date.now() + LEASE_MS;
    try {
      fs.writeSync(fd, JSON.stringify({ holder: me.holder, slot: me.slot, expires_ms }));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return new Lease(this, job, token, me, expires_ms);
  }
}

const LEASE_MS = Math.max(300, Number(process.env.AGENTDRILL_LEASE_MS || 3000));

/** A held lease: checked before every side effect and write, renewed while the job runs. */
class Lease {
  constructor(state, job, token, me, expiresMs) {
    Object.assign(this, { state, job, token, me, expiresMs });
  }

  /** Throws LeaseLost unless this lease is still the newest and has not run out on our own clock. */
  check() {
    if (Date.now() >= this.expiresMs) throw new LeaseLost(`job-${this.job}: lease ${this.token} ran out`);
    const cur = this.state.lease(this.job);
    if (!cur || cur.token !== this.token) throw new LeaseLost(`job-${this.job}: lease ${this.token} superseded by ${cur?.token}`);
  }

  renew() {
    this.check();
    this.expiresMs = this.write(Date.now() + LEASE_MS);
  }

  /** Gives the job up (it failed, or it is done): anyone may take it at once. */
  release() {
    try {
      this.check();
      this.write(0);
    } catch { /* not ours any more: nothing to give up */ }
    this.expiresMs = 0;
  }

  write(expires_ms) {
    const file = path.join(this.state.root, 'leases', `${this.job}.${this.token}`);
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ holder: this.me.holder, slot: this.me.slot, expires_ms }));
    fs.renameSync(tmp, file);
    return expires_ms;
  }

  /** A fenced write: only while the lease holds. */
  async put(kind, value) {
    this.check();
    await this.state.put(kind, this.job, value);
  }
}

// -------------------------------------------------------------------- jobs

/** Runs (or resumes) one job from its checkpoint, under `lease`. */
async function runJob(state, job, lease) {
  const spec = state.get('jobs', job);
  let ck = state.get('checkpoints', job) ??
    { messages: [{ role: 'user', content: `Run job-${job} (${spec.workflow})` }], inFlight: null };
  if (ck.inFlight) {
    // Resumed with a call whose outcome nobody recorded.
    const out = await settle(job, ck.inFlight, lease, true);
    ck = { messages: [...ck.messages, toolResult(ck.inFlight.id, out)], inFlight: null };
    await lease.put('checkpoints', ck);
  }
  for (;;) {
    const turn = await modelTurn(ck.messages, lease);
    if (turn.answer !== undefined) {
      await lease.put('done', { answer: turn.answer, token: lease.token });
      console.log(`job-${job} done: ${turn.answer}`);
      return turn.answer;
    }
    const { id, name, input } = turn.use;
    const call = { id, name, input, key: keyFor(job, name, input) };
    ck = { messages: [...ck.messages, { role: 'assistant', content: turn.blocks }], inFlight: call };
    if (!FLAGS.checkpointAfterStep) await lease.put('checkpoints', ck);
    const out = await settle(job, call, lease, false);
    ck = { messages: [...ck.messages, toolResult(id, out)], inFlight: null };
    await lease.put('checkpoints', ck);
  }
}

function toolResult(id, text) {
  return { role: 'user', content: [{ type: 'tool_result', tool_use_id: id, content: text }] };
}

/** The worker: takes free jobs from the journal, at most `concurrency` at a time, and keeps their leases. */
class Worker {
  constructor(state, me) {
    Object.assign(this, { state, me, running: new Map(), notBefore: new Map() });
  }

  pump() {
    const now = Date.now();
    for (const job of this.state.open()) {
      if (this.running.size >= FLAGS.concurrency) return;
      if (this.running.has(job) || (this.notBefore.get(job) ?? 0) > now) continue;
      const lease = this.state.acquire(job, this.me);
      if (!lease) continue;
      if (lease.token > 1) console.log(`job-${job}: resumed under lease ${lease.token}`);
      this.running.set(job, lease);
      runJob(this.state, job, lease).catch((e) => {
        console.log(`job-${job}: ${e instanceof LeaseLost ? 'stopped' : 'failed, retried from its checkpoint'}: ${e.message}`);
        this.notBefore.set(job, Date.now() + (e instanceof LeaseLost ? 0 : 200));
      }).finally(() => {
        lease.release();
        this.running.delete(job);
        setImmediate(() => this.pump());
      });
    }
  }

  renewAll() {
    for (const [job, lease] of this.running) {
      try {
        lease.renew();
      } catch (e) {
        // Its next check stops the job; nothing of it is written meanwhile.
        if (!(e instanceof LeaseLost)) console.log(`job-${job}: renewal failed: ${e.message}`);
      }
    }
  }
}

function serve() {
  const state = new State(contract('AGENTDRILL_STATE_DIR'));
  const slot = `${contract('AGENTDRILL_PROCESS', 'node-agent')}/${contract('AGENTDRILL_REPLICA', '0')}`;
  const worker = new Worker(state, { slot, holder: `${slot}/${process.pid}` });
  const server = http.createServer((req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'POST' || req.url !== '/jobs') return reply(404, { error: 'POST /jobs only' });
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { raw += c; });
    req.on('end', async () => {
      let job;
      let workflow;
      try {
        ({ job, workflow } = JSON.parse(raw));
      } catch {
        return reply(400, { error: 'body must be JSON: {"job": N, "workflow": "NAME"}' });
      }
      if (!Number.isInteger(job) || job < 0 || typeof workflow !== 'string') {
        return reply(400, { error: '`job` must be a whole number and `workflow` a string' });
      }
      try {
        // A job submitted again is taken as a no-op.
        if (state.get('jobs', job) === null) await state.put('jobs', job, { job, workflow });
      } catch (e) {
        return reply(503, { error: `cannot journal the job: ${e.message}` });
      }
      reply(202, { job, accepted: true });
      setImmediate(() => worker.pump());
    });
  });
  const [host, port] = splitAddr(contract('AGENTDRILL_LISTEN_ADDR'));
  tools().then(() => {
    server.listen(port, host, () => console.log(`node agent ${slot} (pid ${process.pid}) listening on ${host}:${port}, lease ${LEASE_MS} ms`));
    worker.pump();
    setInterval(() => worker.pump(), 100);
    setInterval(() => worker.renewAll(), Math.floor(LEASE_MS / 3));
  }).catch((e) => fail(`cannot read the tools from AGENTDRILL_CONTROL_URL: ${e.message}`));
  process.on('SIGTERM', () => {
    server.close();
    process.exit(0);
  });
}

function splitAddr(addr) {
  const at = addr.lastIndexOf(':');
  if (at < 0) fail(`AGENTDRILL_LISTEN_ADDR must be HOST:PORT, got ${addr}`);
  return [addr.slice(0, at).replace(/^\[|\]$/g, ''), Number(addr.slice(at + 1))];
}

/** One job in this process, then the script's steps with the effects the ledgers hold. */
async function once() {
  const dir = process.env.AGENTDRILL_STATE_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'node-agent-'));
  const state = new State(dir);
  const job = FLAGS.job;
  if (state.get('jobs', job) === null) await state.put('jobs', job, { job, workflow: FLAGS.workflow });
  const lease = state.acquire(job, { slot: 'cli', holder: `cli/${process.pid}` });
  if (!lease) fail(`job-${job} is held by another process (lease in ${dir}/leases)`);
  const timer = setInterval(() => { try { lease.renew(); } catch { /* the next check stops the job */ } }, Math.floor(LEASE_MS / 3));
  try {
    console.log(await runJob(state, job, lease));
  } finally {
    clearInterval(timer);
  }
  const report = (await exchange('GET', `${contract('AGENTDRILL_CONTROL_URL')}/jobs/${job}?template=${FLAGS.workflow}`)).body;
  for (const s of report.steps) console.log(`step ${String(s.step).padStart(2)} ${s.kind.padEnd(13)} effects: ${s.effects}`);
}

parseFlags(process.argv.slice(2));
if (FLAGS.serve) serve();
else once().catch((e) => fail(e.stack || String(e)));
