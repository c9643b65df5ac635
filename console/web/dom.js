// dom.js: building elements without HTML strings, and formatting values.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'testid') el.setAttribute('data-testid', v);
    else if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked' && 'checked' in el) el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** h makes an HTML element: h('div', {class: 'x', testid: 'y'}, children...). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s makes an SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** add appends children to el, leaving out null, undefined and false. */
export function add(el, ...children) {
  append(el, children);
  return el;
}

/** replace puts children into el instead of what it held. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** num reads a protojson number (int64/uint64 travel as strings). */
export const num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));

/** short strips an enum prefix: JOB_STATUS_SUCCEEDED -> SUCCEEDED. */
export function short(v, prefix) {
  if (!v) return '';
  const p = prefix || (v.startsWith('JOB_STATUS_') ? 'JOB_STATUS_' : v.startsWith('STEP_') ? 'STEP_' : '');
  return v.startsWith(p) ? v.slice(p.length) : v;
}

/** The job statuses, as ferryd names them without prefix. */
export const JOB_STATUSES = ['QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'ROLLED_BACK', 'REJECTED', 'CANCELED', 'TIMED_OUT'];
/** The execution statuses of a rollout. */
export const EXECUTION_STATUSES = ['PENDING', ...JOB_STATUSES];

/** badge shows a status with its colour class. */
export function badge(status, attrs = {}) {
  const v = short(status) || 'NONE';
  return h('span', { ...attrs, class: ['badge', `st-${v.toLowerCase()}`, attrs.class] }, v);
}

/** time formats a protojson Timestamp; '' when unset. */
export function time(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** ago says how long ago ts was: "3 min ago". */
export function ago(ts, now = Date.now()) {
  if (!ts) return 'never';
  const secs = Math.round((now - new Date(ts).getTime()) / 1000);
  if (Number.isNaN(secs)) return ts;
  if (secs < 0) return 'in ' + span(-secs);
  return span(secs) + ' ago';
}

function span(secs) {
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.round(secs / 60)} min`;
  if (secs < 86400 * 2) return `${Math.round(secs / 3600)} h`;
  return `${Math.round(secs / 86400)} days`;
}

/** duration formats a protojson Duration ("90s") for people ("1m30s"). */
export function duration(d) {
  if (!d) return '';
  const secs = parseFloat(d);
  if (Number.isNaN(secs)) return d;
  const hh = Math.floor(secs / 3600), mm = Math.floor((secs % 3600) / 60), ss = Math.round(secs % 60);
  return [hh ? `${hh}h` : '', mm ? `${mm}m` : '', ss || (!hh && !mm) ? `${ss}s` : ''].join('');
}

/**
 * parseDuration reads a Go-style duration ("90s", "5m", "1h30m") into a
 * protojson Duration ("5400s"); throws on anything else.
 */
export function parseDuration(text) {
  const t = text.trim();
  if (!t) return undefined;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let secs = 0, used = 0, m;
  while ((m = re.exec(t)) !== null) {
    secs += parseFloat(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    used += m[0].length;
  }
  if (used !== t.length) throw new Error(`"${text}" is not a duration such as 30s, 5m or 1h30m`);
  return `${+secs.toFixed(3)}s`;
}

/** bytes formats a byte count. */
export function bytes(n) {
  n = num(n);
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/** kv renders a map as a definition list (or a dash when empty). */
export function kv(map, attrs = {}) {
  const entries = Object.entries(map || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h('span', { ...attrs, class: 'muted' }, '—');
  return h('dl', { ...attrs, class: 'kv' }, entries.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** field is one labelled value of a details list. */
export function fields(rows, attrs = {}) {
  return h('dl', { ...attrs, class: 'fields' },
    rows.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === '' || v === undefined ? '—' : v)]));
}

/** base64ToBytes decodes protojson bytes. */
export function base64ToBytes(b64) {
  const bin = atob(b64.replace(/-/g, '+').replace(/_/g, '/'));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
