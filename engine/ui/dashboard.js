// patternd dashboard: a static page whose data all comes from the admin JSON routes, asked
// with the bearer token typed into the page (kept in this tab's sessionStorage). Rendered
// with textContent and SVG attributes only, never as HTML: the page's CSP allows no inline
// code, and nothing a policy or Redis says can become markup. Design: docs/dashboard.md.
'use strict';

(function () {
  const TOKEN_KEY = 'patternd-admin-token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const POLL_MS = 1000;
  const POLICIES_MS = 10000;
  const DOCTOR_MS = 30000;

  // CSP violations are counted where a test (or a curious operator) can read them.
  const violations = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    violations.push(e.violatedDirective + ' ' + e.blockedURI);
    document.body.dataset.cspViolations = String(violations.length);
    document.body.dataset.cspViolation = violations[violations.length - 1];
  });

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    samples: [],
    lastSeq: null,
    capacity: 300,
    intervalMs: 1000,
    policies: null,
    // The doctor's sample of each rule's keys, by `app/rule` (empty without a doctor).
    ruleKeys: new Map(),
    timers: [],
  };

  class AuthError extends Error {
    constructor(status) {
      super(status === 403
        ? 'no admin token is set on this engine, and this browser is not on loopback'
        : 'the engine refused this token');
      this.status = status;
    }
  }

  async function api(path) {
    const headers = {};
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    const resp = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    if (resp.status === 401 || resp.status === 403) throw new AuthError(resp.status);
    return resp;
  }

  async function apiJson(path) {
    const resp = await api(path);
    if (!resp.ok) throw new Error(path + ' answered ' + resp.status);
    return resp.json();
  }

  // ---- small DOM helpers (text only) -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return v.toFixed(d).replace(/\.0+$|(\.\d*?)0+$/, '$1');
  }

  function bytes(n) {
    if (typeof n !== 'number') return String(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return fmt(n, i === 0 ? 0 : 1) + ' ' + units[i];
  }

  function duration(ms) {
    if (typeof ms !== 'number') return String(ms);
    const units = [['d', 86400000], ['h', 3600000], ['m', 60000], ['s', 1000]];
    for (const [u, size] of units) {
      if (ms >= size && ms % size === 0) return (ms / size) + u;
    }
    return ms + 'ms';
  }

  // ---- charts --------------------------------------------------------------------------------

  const sum = (obj, keys) => keys.reduce((a, k) => a + ((obj && obj[k]) || 0), 0);
  const all = (obj) => Object.values(obj || {}).reduce((a, v) => a + v, 0);
  const rate = (s, family) => s.rates[family] || {};

  // Each chart: what it plots from one sample. A series value of null leaves a gap.
  const CHARTS = [
    {
      id: 'decisions', title: 'Rate-limit decisions', unit: '/s',
      series: [
        ['allowed', (s) => sum(rate(s, 'patternd_decisions_total'), ['allowed', 'degraded_allowed', 'shadow_denied', 'ok'])],
        ['denied', (s) => sum(rate(s, 'patternd_decisions_total'), ['denied', 'degraded_denied', 'failed'])],
      ],
    },
    {
      id: 'cache', title: 'Cache hit ratio', unit: '%', max: 100,
      series: [
        ['hit ratio', (s) => {
          const r = rate(s, 'patternd_cache_requests_total');
          const reads = all(r);
          return reads > 0 ? 100 * sum(r, ['hit', 'stale']) / reads : null;
        }],
      ],
      note: (s) => fmt(all(rate(s, 'patternd_cache_requests_total'))) + ' reads/s',
    },
    {
      id: 'reads', title: 'Cache reads', unit: '/s',
      series: [
        ['hit', (s) => sum(rate(s, 'patternd_cache_requests_total'), ['hit', 'stale'])],
        ['miss', (s) => sum(rate(s, 'patternd_cache_requests_total'), ['miss', 'refresh', 'collapsed', 'negative'])],
        ['error', (s) => sum(rate(s, 'patternd_cache_requests_total'), ['error', 'redis_error', 'redis_origin'])],
      ],
    },
    {
      id: 'origin', title: 'Origin latency', unit: 'ms',
      series: [
        ['p50', (s) => (s.latency.patternd_cache_origin_seconds || {}).p50_ms ?? null],
        ['p95', (s) => (s.latency.patternd_cache_origin_seconds || {}).p95_ms ?? null],
      ],
    },
    {
      id: 'redis', title: 'Redis round trips', unit: 'ms',
      series: [
        ['p50', (s) => (s.latency.patternd_redis_seconds || {}).p50_ms ?? null],
        ['p95', (s) => (s.latency.patternd_redis_seconds || {}).p95_ms ?? null],
      ],
      note: (s) => fmt((s.latency.patternd_redis_seconds || {}).per_s || 0) + ' calls/s',
    },
    {
      id: 'queues', title: 'Queue depth', unit: 'jobs',
      series: [
        ['ready', (s) => (s.gauges.patternd_queue_jobs || {}).ready || 0],
        ['delayed', (s) => (s.gauges.patternd_queue_jobs || {}).delayed || 0],
        ['in flight', (s) => (s.gauges.patternd_queue_jobs || {}).in_flight || 0],
        ['dead', (s) => (s.gauges.patternd_queue_jobs || {}).dead || 0],
      ],
    },
    {
      id: 'locks', title: 'Lock waits', unit: '/s',
      series: [
        ['waits', (s) => rate(s, 'patternd_lock_requests_total').retry || 0],
        ['busy', (s) => rate(s, 'patternd_lock_requests_total').busy || 0],
        ['acquired', (s) => rate(s, 'patternd_lock_requests_total').acquired || 0],
      ],
    },
    {
      id: 'errors', title: 'Failures', unit: '/s',
      series: [
        ['redis errors', (s) => all(rate(s, 'patternd_redis_errors_total'))],
        ['plugin failures', (s) => all(rate(s, 'patternd_plugin_failures_total'))],
      ],
    },
  ];

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function buildCharts() {
    const box = $('charts');
    box.replaceChildren();
    for (const c of CHARTS) {
      const legend = el('div', { class: 'legend' });
      c.series.forEach(([name], i) => {
        legend.append(el('span', { class: 'key s' + i, 'data-series': name }, name + ' ', el('b', {}, '–')));
      });
      const chart = svg('svg', { viewBox: '0 0 300 112', class: 'chart' });
      c.node = el('div', { class: 'card', 'data-chart': c.id, 'data-points': '0', 'data-sums': '{}' },
        el('h3', {}, c.title + ' ', el('span', { class: 'muted' }, c.unit)),
        chart, legend, el('div', { class: 'note muted' }));
      c.svg = chart;
      box.append(c.node);
    }
  }

  // x: the history there is (at least a minute, at most the ring's span) ending at the newest
  // sample; y: 0 to a round maximum.
  function drawCharts() {
    const samples = state.samples;
    const end = samples.length ? samples[samples.length - 1].t_ms : Date.now();
    const had = samples.length ? end - samples[0].t_ms + state.intervalMs : 0;
    const span = Math.min(state.capacity * state.intervalMs, Math.max(60000, Math.ceil(had / 60000) * 60000));
    const W = 300, H = 100, TOP = 4;
    for (const c of CHARTS) {
      const values = c.series.map(([, f]) => samples.map((s) => ({ t: s.t_ms, v: f(s) })));
      let max = 0;
      for (const pts of values) for (const p of pts) if (p.v !== null && p.v > max) max = p.v;
      const top = c.max || niceMax(max);
      const g = [];
      for (const f of [0, 0.5, 1]) {
        const y = TOP + (H - TOP) * (1 - f);
        g.push(svg('line', { x1: 0, x2: W, y1: y, y2: y, class: 'grid' }));
        const label = svg('text', { x: 2, y: f === 0 ? y - 2 : y + 9, class: 'axis' });
        label.textContent = fmt(top * f);
        g.push(label);
      }
      const minutes = Math.round(span / 60000);
      for (const [x, anchor, text] of [[0, 'start', '−' + minutes + ' min'], [W, 'end', 'now']]) {
        const label = svg('text', { x, y: H + 10, 'text-anchor': anchor, class: 'axis' });
        label.textContent = text;
        g.push(label);
      }
      const sums = {};
      values.forEach((pts, i) => {
        let d = '';
        let pen = false;
        let total = 0;
        let lastPoint = null;
        for (const p of pts) {
          if (p.v === null) { pen = false; continue; }
          total += p.v;
          const x = W - (end - p.t) / span * W;
          const y = TOP + (H - TOP) * (1 - Math.min(p.v, top) / top);
          d += (pen ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
          pen = true;
          lastPoint = [x, y];
        }
        sums[c.series[i][0]] = total;
        if (d) g.push(svg('path', { d, class: 'line s' + i }));
        // The newest value as a dot: a lone point (a ratio after one sample) shows too.
        if (lastPoint) g.push(svg('circle', { cx: lastPoint[0].toFixed(1), cy: lastPoint[1].toFixed(1), r: 1.8, class: 'dot s' + i }));
      });
      c.svg.replaceChildren(...g);
      c.node.dataset.points = String(samples.length);
      c.node.dataset.sums = JSON.stringify(sums);
      const last = samples[samples.length - 1];
      c.node.querySelectorAll('.legend .key').forEach((k, i) => {
        const v = last ? c.series[i][1](last) : null;
        k.querySelector('b').textContent = fmt(v);
      });
      c.node.querySelector('.note').textContent = last && c.note ? c.note(last) : '';
    }
  }

  // ---- samples -------------------------------------------------------------------------------

  async function pollSamples() {
    const after = state.lastSeq === null ? '' : '?after=' + state.lastSeq;
    const body = await apiJson('/admin/samples' + after);
    state.capacity = body.capacity;
    state.intervalMs = body.interval_ms;
    const fresh = body.samples;
    // A restarted engine counts from 1 again: start over rather than wait to catch up.
    if (state.lastSeq !== null && body.latest !== null && body.latest < state.lastSeq) {
      state.samples = [];
      state.lastSeq = null;
      return pollSamples();
    }
    if (fresh.length) {
      state.samples = state.samples.concat(fresh).slice(-state.capacity);
      state.lastSeq = fresh[fresh.length - 1].seq;
    }
    drawCharts();
    renderActivity();
    renderFamilies();
    $('status').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('status').className = 'muted';
  }

  // Every family of the last minute's samples, averaged: patterns added later show here
  // without a change to this page.
  function renderFamilies() {
    const recent = state.samples.slice(-60);
    const acc = new Map();
    for (const s of recent) {
      for (const [kind, obj] of [['rate', s.rates], ['gauge', s.gauges]]) {
        for (const [family, by] of Object.entries(obj)) {
          for (const [k, v] of Object.entries(by)) {
            const key = family + '\u0000' + k;
            const a = acc.get(key) || { family, k, kind, v: 0 };
            a.v += v;
            acc.set(key, a);
          }
        }
      }
      for (const [family, l] of Object.entries(s.latency)) {
        const key = family + '\u0000p95';
        const a = acc.get(key) || { family, k: 'p95 ms', kind: 'latency', v: 0 };
        a.v += l.p95_ms;
        acc.set(key, a);
      }
    }
    const rows = [...acc.values()].sort((a, b) => (a.family + a.k).localeCompare(b.family + b.k));
    const n = Math.max(recent.length, 1);
    $('families').tBodies[0].replaceChildren(...rows.map((r) => el('tr', { 'data-family': r.family },
      el('td', {}, el('code', {}, r.family)), el('td', {}, r.k),
      el('td', { class: 'num' }, fmt(r.v / n) + (r.kind === 'rate' ? '/s' : '')))));
  }

  // ---- rules ---------------------------------------------------------------------------------

  const NOT_SETTINGS = new Set(['rule', 'kind', 'description', 'source', 'scripts', 'keys']);

  function settingText(key, v) {
    if (v === null || v === undefined) return null;
    if (Array.isArray(v)) {
      if (!v.length) return null;
      return v.map((x) => (typeof x === 'object' && x !== null ? objectText(x) : String(x))).join('; ');
    }
    if (typeof v === 'object') return objectText(v);
    if (key.endsWith('_ms') && typeof v === 'number') return duration(v);
    return String(v);
  }

  function objectText(o) {
    return Object.entries(o)
      .map(([k, v]) => [k.replace(/_ms$/, ''), settingText(k, v)])
      .filter(([, t]) => t !== null)
      .map(([k, t]) => k + '=' + t).join(' ');
  }

  // One table for every app (an app is a heading row), so the columns line up; each rule's
  // settings are whatever /admin/policies says of it, so a new pattern needs no change here.
  function renderPolicies(p) {
    state.policies = p;
    $('loaded-at').textContent = 'loaded ' + p.loaded_at;
    $('warnings').replaceChildren(...(p.warnings || []).map((w) => el('p', { class: 'warn' }, w)));
    const rows = [];
    for (const app of p.apps) {
      rows.push(el('tr', { class: 'app', 'data-app': app.app },
        el('th', { colSpan: 5 }, app.app, el('span', { class: 'muted' }, ' · ' + app.rules.length + (app.rules.length === 1 ? ' rule' : ' rules')))));
      for (const r of app.rules) {
        const settings = el('dl', { class: 'settings' });
        for (const [k, v] of Object.entries(r)) {
          if (NOT_SETTINGS.has(k)) continue;
          const t = settingText(k, v);
          if (t === null) continue;
          settings.append(el('div', {}, el('dt', {}, k.replace(/_ms$/, '')), el('dd', {}, t)));
        }
        const name = el('td', { title: r.source || '' }, el('b', {}, r.rule));
        if (r.description) name.append(el('div', { class: 'muted' }, r.description));
        rows.push(el('tr', { 'data-rule': app.app + '/' + r.rule, 'data-kind': r.kind },
          name,
          el('td', {}, el('span', { class: 'pill kind' }, r.kind)),
          el('td', { class: 'num activity' }, '–'),
          el('td', { class: 'num keys' }, '–'),
          el('td', {}, settings)));
      }
    }
    const table = el('table', { class: 'rules' },
      el('thead', {}, el('tr', {}, el('th', {}, 'rule'), el('th', {}, 'pattern'),
        el('th', { class: 'num' }, 'events/s'),
        el('th', { class: 'num', title: 'from the doctor: keys in the namespace, and their memory (sampled)' }, 'keys · memory'),
        el('th', {}, 'settings'))),
      el('tbody', {}, ...rows));
    $('rules').replaceChildren(rows.length ? table : el('p', { class: 'muted' }, 'No rules loaded.'));
    renderActivity();
    renderRuleKeys();
  }

  function renderRuleKeys() {
    document.querySelectorAll('tr[data-rule]').forEach((tr) => {
      const k = state.ruleKeys.get(tr.dataset.rule);
      const cell = tr.querySelector('.keys');
      if (!k) {
        cell.textContent = '–';
        return;
      }
      cell.textContent = (k.keys_exact ? '' : '≈') + k.keys + ' · ' + bytes(k.memory_bytes);
      if (k.no_ttl && k.no_ttl.length) cell.append(el('div', { class: 'error' }, k.no_ttl.length + ' without TTL'));
    });
  }

  // Each rule's events per second over the last 10 samples (every counter of the rule).
  function renderActivity() {
    const recent = state.samples.slice(-10);
    document.querySelectorAll('tr[data-rule]').forEach((tr) => {
      const key = tr.dataset.rule;
      const v = recent.reduce((a, s) => a + (s.rules[key] || 0), 0) / Math.max(recent.length, 1);
      tr.querySelector('.activity').textContent = fmt(v);
      tr.dataset.activity = String(v);
    });
  }

  // ---- doctor and Redis memory ---------------------------------------------------------------

  const ORDER = { fail: 0, warn: 1, ok: 2 };

  async function pollDoctor() {
    const panel = $('doctor-panel');
    let resp;
    try {
      resp = await api('/admin/doctor');
    } catch (e) {
      if (e instanceof AuthError) throw e;
      resp = null;
    }
    if (!resp || resp.status !== 200) {
      state.ruleKeys = new Map();
      renderRuleKeys();
      panel.dataset.state = 'unavailable';
      $('doctor-status').textContent = '';
      $('doctor').replaceChildren(el('p', { class: 'muted' },
        'doctor unavailable' + (resp ? ' (HTTP ' + resp.status + ')' : ' (no answer)')));
      $('memory').replaceChildren(el('p', { class: 'muted' }, 'Redis memory comes with the doctor: unavailable.'));
      return;
    }
    const d = await resp.json();
    panel.dataset.state = d.status;
    $('doctor-status').textContent = d.status;
    $('doctor-status').className = 'pill ' + d.status;
    const checks = (d.checks || []).slice().sort((a, b) => (ORDER[a.status] ?? 3) - (ORDER[b.status] ?? 3));
    panel.dataset.checks = String(checks.length);
    $('doctor').replaceChildren(el('ul', { class: 'checks' }, ...checks.map((c) => el('li', { 'data-check': c.id, 'data-status': c.status },
      el('span', { class: 'pill ' + c.status }, c.status), ' ',
      el('b', {}, c.title), c.rule ? el('span', { class: 'muted' }, ' (' + c.rule + ')') : null,
      c.node ? el('span', { class: 'muted' }, ' on ' + c.node) : null,
      c.evidence ? el('div', { class: 'evidence' }, String(c.evidence)) : null,
      c.fix ? el('div', { class: 'fix' }, 'Fix: ' + c.fix) : null))));
    renderMemory(d.redis || {});
    state.ruleKeys = new Map((d.rules || []).map((r) => [r.rule, r]));
    renderRuleKeys();
  }

  function renderMemory(r) {
    const used = Number(r.used_memory);
    const max = Number(r.maxmemory);
    const parts = [];
    if (Number.isFinite(used)) {
      parts.push(el('p', { class: 'big' }, bytes(used),
        el('span', { class: 'muted' }, max > 0 ? ' of ' + bytes(max) : ' (no maxmemory)')));
      if (max > 0) {
        const bar = svg('svg', { viewBox: '0 0 100 6', preserveAspectRatio: 'none', class: 'bar' });
        const pct = Math.min(100, 100 * used / max);
        bar.append(svg('rect', { x: 0, y: 0, width: 100, height: 6, class: 'track' }),
          svg('rect', { x: 0, y: 0, width: pct, height: 6, class: pct > 90 ? 'fill hot' : 'fill' }));
        parts.push(bar);
      }
    }
    const dl = el('dl', { class: 'settings' });
    for (const [k, v] of Object.entries(r)) {
      if (k === 'used_memory' || k === 'maxmemory' || v === null || typeof v === 'object') continue;
      dl.append(el('dt', {}, k), el('dd', {}, /memory|bytes/.test(k) && typeof v === 'number' ? bytes(v) : String(v)));
    }
    parts.push(dl);
    // A cluster: each primary's and replica's memory.
    if (Array.isArray(r.nodes) && r.nodes.length > 1) {
      parts.push(el('ul', { class: 'nodes' }, ...r.nodes.map((n) => el('li', {},
        el('code', {}, String(n.addr)), ' ' + (n.role || '') + ' ',
        bytes(Number(n.used_memory)) + (Number(n.maxmemory) > 0 ? ' of ' + bytes(Number(n.maxmemory)) : '')))));
    }
    $('memory').replaceChildren(...parts);
    $('memory-panel').dataset.usedMemory = String(used);
  }

  // ---- lifecycle -----------------------------------------------------------------------------

  function every(ms, f) {
    const run = () => f().catch(onError);
    state.timers.push(setInterval(run, ms));
    return run();
  }

  function stop() {
    state.timers.forEach(clearInterval);
    state.timers = [];
  }

  function onError(e) {
    if (e instanceof AuthError) {
      showLogin(e.message);
      return;
    }
    $('status').textContent = 'engine unreachable: ' + e.message;
    $('status').className = 'error';
  }

  function showLogin(message) {
    stop();
    $('main').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('status').textContent = 'not signed in';
    $('token').focus();
  }

  async function start() {
    try {
      renderPolicies(await apiJson('/admin/policies'));
    } catch (e) {
      if (e instanceof AuthError) {
        // Without a stored token this is the first visit, not a refusal.
        showLogin(state.token ? e.message : '');
      } else {
        onError(e);
      }
      return;
    }
    $('login').hidden = true;
    $('main').hidden = false;
    $('logout').hidden = !state.token;
    document.body.dataset.signedIn = 'true';
    buildCharts();
    every(POLL_MS, pollSamples);
    every(POLICIES_MS, async () => renderPolicies(await apiJson('/admin/policies')));
    every(DOCTOR_MS, pollDoctor);
  }

  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = $('token').value.trim();
    $('token').value = '';
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });

  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    document.body.dataset.signedIn = 'false';
    showLogin('');
  });

  start();
})();
