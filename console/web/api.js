// api.js: the operator's credential and the services of ferryd's API.

import { createClient } from './connect.js';

const storageKey = 'ferry.console.auth';

/**
 * The credential lives in sessionStorage only: it is gone when the tab
 * closes. mode "key" sends the API key as a bearer token; mode "cert" sends
 * nothing and lets the browser's TLS client certificate authenticate.
 */
export const credential = {
  get() {
    try {
      const v = JSON.parse(sessionStorage.getItem(storageKey) || 'null');
      return v && (v.mode === 'cert' || (v.mode === 'key' && v.key)) ? v : null;
    } catch {
      return null;
    }
  },
  set(v) { sessionStorage.setItem(storageKey, JSON.stringify(v)); },
  clear() { sessionStorage.removeItem(storageKey); },
};

let pending = null; // a credential being tried at sign-in

function authHeaders() {
  const c = pending || credential.get();
  return c && c.mode === 'key' ? { Authorization: `Bearer ${c.key}` } : {};
}

const client = createClient({ headers: authHeaders });

/** tryCredential calls fn with c as the credential, without storing it. */
export async function tryCredential(c, fn) {
  pending = c;
  try {
    return await fn();
  } finally {
    pending = null;
  }
}

function service(name) {
  return new Proxy({}, {
    get(_, method) {
      if (typeof method !== 'string') return undefined;
      return (req, opts) => client.unary(name, method, req, opts);
    },
  });
}

export const FLEET = 'ferry.fleet.v1.FleetService';
export const ROLLOUT = 'ferry.fleet.v1.RolloutService';
export const REPOSITORY = 'ferry.repository.v1.RepositoryService';
export const OPERATOR = 'ferry.fleet.v1.OperatorService';

export const fleet = service(FLEET);
export const rollouts = service(ROLLOUT);
export const repository = service(REPOSITORY);
export const operator = service(OPERATOR);

/** watch opens a server stream (see connect.js stream). */
export function watch(svc, method, req, opts) {
  return client.stream(svc, method, req, opts);
}

/** procedure names an RPC as WhoAmI's allowed_procedures do. */
export const procedure = (svc, method) => `/${svc}/${method}`;
