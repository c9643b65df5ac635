// The bundles page: the repository's bundles with their signed metadata,
// and the TUF roles' versions and expiry.

import { repository } from '../api.js';
import { h, add, time, ago, bytes } from '../dom.js';

export async function render(ctx) {
  const res = await repository.ListBundles({ pageSize: 1000 }, { signal: ctx.signal });
  let roles = null;
  try {
    roles = await repository.GetRepositoryStatus({}, { signal: ctx.signal });
  } catch (err) {
    if (err.code !== 'unimplemented' && err.code !== 'not_found') ctx.error(err);
  }
  add(ctx.root, h('h1', {}, 'Bundles'),
    roles ? h('section', { class: 'card', testid: 'repo-roles' }, h('h2', {}, 'TUF roles'),
      h('table', { class: 'table' },
        h('thead', {}, h('tr', {}, ['Role', 'Version', 'Expires', 'Signed', ''].map((c) => h('th', {}, c)))),
        h('tbody', {}, (roles.roles || []).map((r) => h('tr', { testid: 'role-row', 'data-role': r.role, class: r.expired ? 'bad' : r.expiresSoon ? 'warn' : '' },
          h('td', {}, r.role), h('td', {}, r.version), h('td', { title: r.expireTime || '' }, time(r.expireTime), ' (', ago(r.expireTime), ')'),
          h('td', {}, r.online ? 'online by ferryd' : 'offline'),
          h('td', {}, r.expired || r.expiresSoon
            ? h('span', { class: ['badge', r.expired ? 'bad' : 'warnb'], testid: 'role-expiry-warning' }, r.expired ? 'expired' : 'expires soon')
            : '')))))) : null,
    h('section', { class: 'card' }, h('h2', {}, 'Bundles'),
      h('table', { class: 'table', testid: 'bundles-table' },
        h('thead', {}, h('tr', {}, ['Target', 'Version', 'Hardware', 'Downgrade', 'Size', 'Published', 'Release notes'].map((c) => h('th', {}, c)))),
        h('tbody', {}, (res.bundles || []).map((b) => h('tr', { testid: 'bundle-row', 'data-target-path': b.targetPath },
          h('td', {}, h('strong', {}, b.targetPath), h('div', { class: 'muted' }, b.role ? `role ${b.role}` : '')),
          h('td', {}, b.version || ''), h('td', {}, (b.hardware || []).join(', ') || 'any'),
          h('td', {}, b.downgradeAllowed ? 'allowed' : 'no'), h('td', {}, bytes(b.length)),
          h('td', {}, time(b.publishTime)), h('td', { class: 'notes' }, b.releaseNotes || '')))))));
}
