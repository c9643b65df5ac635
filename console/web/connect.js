// connect.js: a small client for the Connect protocol with JSON, for
// unary calls and server streams, as ferryd's API speaks it.
//
// Unary: POST /<package>.<Service>/<Method>, Content-Type application/json,
// the request message as JSON; a 200 answer is the response message, any
// other status carries {"code", "message"}.
// Server stream: POST with Content-Type application/connect+json; the
// request and each response message travel as envelopes (1 flag byte,
// 4-byte big-endian length, JSON). The last envelope has flag 0x02 and
// carries {"error"?, "metadata"?}.

/** Connect error codes by HTTP status, for answers without a Connect body. */
const codeByHTTPStatus = {
  400: 'invalid_argument', 401: 'unauthenticated', 403: 'permission_denied',
  404: 'unimplemented', 408: 'deadline_exceeded', 409: 'aborted',
  412: 'failed_precondition', 413: 'resource_exhausted', 415: 'internal',
  429: 'unavailable', 431: 'resource_exhausted', 502: 'unavailable',
  503: 'unavailable', 504: 'unavailable',
};

/** Envelope flags. */
export const FLAG_COMPRESSED = 0x01;
export const FLAG_END_STREAM = 0x02;

/** ConnectError is a failed call: a Connect code and the server's message. */
export class ConnectError extends Error {
  constructor(code, message, details = []) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'ConnectError';
    this.code = code;
    this.rawMessage = message || '';
    this.details = details;
  }

  /** The error as an operator reads it: "code: message". */
  toString() { return this.message; }

  /** from turns anything thrown into a ConnectError. */
  static from(err) {
    if (err instanceof ConnectError) return err;
    if (err && err.name === 'AbortError') return new ConnectError('canceled', 'the call was canceled');
    return new ConnectError('unavailable', err && err.message ? err.message : String(err));
  }
}

/** errorFromJSON reads a Connect error body ({"code", "message"}). */
export function errorFromJSON(obj, fallbackCode = 'unknown') {
  if (!obj || typeof obj !== 'object') return new ConnectError(fallbackCode, '');
  return new ConnectError(typeof obj.code === 'string' ? obj.code : fallbackCode,
    typeof obj.message === 'string' ? obj.message : '', obj.details || []);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** encodeEnvelope frames data (a Uint8Array) with flags. */
export function encodeEnvelope(flags, data) {
  const out = new Uint8Array(5 + data.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, flags);
  view.setUint32(1, data.length, false);
  out.set(data, 5);
  return out;
}

/**
 * EnvelopeReader parses envelopes from chunks as they arrive: push a chunk,
 * get back the envelopes it completed ({flags, data}). A chunk may hold
 * part of an envelope, or several.
 */
export class EnvelopeReader {
  constructor() { this.buf = new Uint8Array(0); }

  push(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf, 0);
    joined.set(chunk, this.buf.length);
    const out = [];
    let off = 0;
    while (joined.length - off >= 5) {
      const view = new DataView(joined.buffer, joined.byteOffset + off, 5);
      const flags = view.getUint8(0);
      const len = view.getUint32(1, false);
      if (joined.length - off - 5 < len) break;
      out.push({ flags, data: joined.slice(off + 5, off + 5 + len) });
      off += 5 + len;
    }
    this.buf = joined.slice(off);
    return out;
  }

  /** pending is how many bytes of an incomplete envelope are held. */
  get pending() { return this.buf.length; }
}

function parseJSON(bytes, what) {
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw new ConnectError('internal', `${what} is not valid JSON: ${e.message}`);
  }
}

/**
 * createClient returns a client of the Connect API at baseUrl ('' for the
 * page's origin). headers() is asked before every call, for the
 * credential; fetchImpl defaults to the global fetch.
 */
export function createClient({ baseUrl = '', headers = () => ({}), fetchImpl } = {}) {
  const doFetch = fetchImpl || ((...args) => globalThis.fetch(...args));
  const url = (service, method) => `${baseUrl}/${service}/${method}`;

  /** unary calls service/method with req and resolves to the response. */
  async function unary(service, method, req = {}, { signal } = {}) {
    let res;
    try {
      res = await doFetch(url(service, method), {
        method: 'POST',
        headers: {
          ...headers(),
          'Content-Type': 'application/json',
          'Connect-Protocol-Version': '1',
        },
        body: JSON.stringify(req),
        signal,
        credentials: 'same-origin',
      });
    } catch (e) {
      throw ConnectError.from(e);
    }
    const body = new Uint8Array(await res.arrayBuffer());
    if (res.status === 200) return body.length ? parseJSON(body, 'the response') : {};
    const fallback = codeByHTTPStatus[res.status] || 'unknown';
    let obj = null;
    try { obj = JSON.parse(decoder.decode(body)); } catch { /* not a Connect body */ }
    if (obj && typeof obj.code === 'string') return Promise.reject(errorFromJSON(obj, fallback));
    throw new ConnectError(fallback, `HTTP ${res.status}${res.statusText ? ' ' + res.statusText : ''}`);
  }

  /**
   * stream calls a server-streaming service/method with req, calls
   * onMessage with each response message, and resolves when the server
   * ends the stream without an error (rejects with a ConnectError
   * otherwise). Abort signal to stop it.
   */
  async function stream(service, method, req = {}, { signal, onMessage = () => {} } = {}) {
    let res;
    try {
      res = await doFetch(url(service, method), {
        method: 'POST',
        headers: {
          ...headers(),
          'Content-Type': 'application/connect+json',
          'Connect-Protocol-Version': '1',
        },
        body: encodeEnvelope(0, encoder.encode(JSON.stringify(req))),
        signal,
        credentials: 'same-origin',
      });
    } catch (e) {
      throw ConnectError.from(e);
    }
    if (res.status !== 200) {
      const text = await res.text().catch(() => '');
      let obj = null;
      try { obj = JSON.parse(text); } catch { /* not a Connect body */ }
      const fallback = codeByHTTPStatus[res.status] || 'unknown';
      if (obj && typeof obj.code === 'string') throw errorFromJSON(obj, fallback);
      throw new ConnectError(fallback, `HTTP ${res.status}`);
    }
    const reader = res.body.getReader();
    const envelopes = new EnvelopeReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        for (const env of envelopes.push(value)) {
          if (env.flags & FLAG_COMPRESSED) {
            throw new ConnectError('internal', 'the server sent a compressed message, which was not asked for');
          }
          if (env.flags & FLAG_END_STREAM) {
            const end = env.data.length ? parseJSON(env.data, 'the end of the stream') : {};
            if (end.error) throw errorFromJSON(end.error);
            return;
          }
          onMessage(parseJSON(env.data, 'a stream message'));
        }
      }
    } catch (e) {
      throw ConnectError.from(e);
    } finally {
      reader.releaseLock?.();
    }
    throw new ConnectError('unavailable', 'the stream ended without its end message');
  }

  return { unary, stream };
}
