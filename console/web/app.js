// app.js: the console's shell: sign-in, the operator's role, hash routing
// and the error banner. Each page is a module under pages/ exporting
// render(ctx).

import { credential, tryCredential, operator, procedure, fleet } from './api.js';
import { ConnectError } from './connect.js';
import { h, replace } from './dom.js';
import * as fleetPage from './pages/fleet.js';
import * as devicesPage from './pages/devices.js';
import * as devicePage from './pages/device.js';
import * as rolloutsPage from './pages/rollouts.js';
import * as rolloutNewPage from './pages/rollout_new.js';
import * as rolloutPage from './pages/rollout.js';
import * as bundlesPage from './pages/bundles.js';
import * as signinPage from './pages/signin.js';

const routes = [
  [/^\/fleet$/, fleetPage],
  [/^\/devices$/, devicesPage],
  [/^\/devices\/(.+)$/, devicePage],
  [/^\/rollouts$/, rolloutsPage],
  [/^\/rollouts\/new$/, rolloutNewPage],
  [/^\/rollouts\/(.+)$/, rolloutPage],
  [/^\/bundles$/, bundlesPage],
];

const $ = (id) => document.getElementById(id);
const main = $('main');

/** The signed-in operator: {name, role, authentication, allowed: Set}. */
let session = null;
let current = null; // the current page's AbortController

/** showError puts err in the banner ("code: message"). */
export function showError(err) {
  const e = ConnectError.from(err);
  if (e.code === 'canceled') return;
  $('banner-text').textContent = e.message;
  $('banner').dataset.code = e.code;
  $('banner').hidden = false;
}

function clearError() {
  $('banner').hidden = true;
  $('banner-text').textContent = '';
  delete $('banner').dataset.code;
}

/**
 * whoAmI learns the caller's name and role. Without an OperatorService
 * (an older ferryd) a harmless read proves the credential, and the console
 * shows no write controls.
 */
async function whoAmI() {
  try {
    const w = await operator.WhoAmI({});
    return { name: w.name || '', role: w.role || 'viewer', authentication: w.authentication || '',
      allowed: new Set(w.allowedProcedures || []) };
  } catch (err) {
    if (!(err instanceof ConnectError) || (err.code !== 'unimplemented' && err.code !== 'not_found')) throw err;
    await fleet.GetFleetSummary({});
    return { name: 'operator', role: 'viewer', authentication: '', allowed: new Set() };
  }
}

/** signIn tries credential c and keeps it when ferryd accepts it. */
export async function signIn(c) {
  const who = await tryCredential(c, whoAmI);
  credential.set(c);
  session = who;
  showSession();
  if (!location.hash || location.hash.startsWith('#/signin')) location.hash = '#/fleet';
  else route();
}

function signOut() {
  credential.clear();
  session = null;
  showSession();
  location.hash = '#/signin';
}

function showSession() {
  $('nav').hidden = !session;
  $('who').hidden = !session;
  $('whoami').textContent = session ? `${session.name} (${session.role})` : '';
  if (session) $('whoami').dataset.role = session.role;
  else delete $('whoami').dataset.role;
}

/** can reports whether the operator's role allows calling svc/method. */
function can(svc, method) {
  return !!session && session.allowed.has(procedure(svc, method));
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/fleet';
  const [path, qs] = raw.split('?');
  return { path, query: new URLSearchParams(qs || '') };
}

async function route() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  const { path, query } = parseHash();
  clearError();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', path.startsWith(a.getAttribute('href').slice(1)));
  }
  if (!session) {
    replace(main);
    signinPage.render({ root: main, signIn, signal });
    return;
  }
  if (path === '/signin') { location.hash = '#/fleet'; return; }
  const match = routes.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  replace(main);
  if (!match) {
    main.append(h('section', { class: 'card' }, h('h1', {}, 'Not found'), h('p', {}, 'No page at ', path, '.')));
    return;
  }
  const [m, page] = match;
  const ctx = {
    root: main, signal, query, params: m.slice(1).map(decodeURIComponent), session, can,
    error: (err) => { if (!signal.aborted) showError(err); },
    clearError,
    navigate: (hash) => { location.hash = hash; },
  };
  try {
    await page.render(ctx);
  } catch (err) {
    if (signal.aborted) return;
    if (err instanceof ConnectError && err.code === 'unauthenticated') { signOut(); return; }
    showError(err);
  }
}

async function start() {
  $('signout').addEventListener('click', signOut);
  $('banner-dismiss').addEventListener('click', clearError);
  window.addEventListener('hashchange', route);
  const c = credential.get();
  if (c) {
    try {
      await signIn(c);
      return;
    } catch (err) {
      credential.clear();
      if (!(err instanceof ConnectError) || err.code !== 'unauthenticated') showError(err);
    }
  }
  showSession();
  route();
}

start();
