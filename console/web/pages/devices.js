// The device list: the ListDevices filters and paging.

import { fleet } from '../api.js';
import { h, add, short, JOB_STATUSES, ago, kv } from '../dom.js';

export async function render(ctx) {
  const q = ctx.query;
  const input = (testid, name, attrs = {}) => h('input', { testid, name, value: q.get(name) || '', ...attrs });
  const seen = q.get('seen_before');
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      if (!v) continue;
      p.set(k, k === 'seen_before' ? new Date(v).toISOString() : v);
    }
    ctx.navigate(`#/devices?${p}`);
  } },
  h('label', {}, 'Labels', input('devices-filter-selector', 'selector', { placeholder: 'ring=canary,model=gw2' })),
  h('label', {}, 'Bundle', input('devices-filter-bundle', 'bundle', { placeholder: 'target path or (none)' })),
  h('label', {}, 'Status', h('select', { name: 'status', testid: 'devices-filter-status' },
    h('option', { value: '' }, 'any'),
    JOB_STATUSES.map((st) => h('option', { value: st, selected: q.get('status') === st }, st)))),
  h('label', {}, 'Last seen before', h('input', { type: 'datetime-local', name: 'seen_before', testid: 'devices-filter-seen-before',
    value: seen ? new Date(seen).toISOString().slice(0, 16) : '' })),
  h('button', { type: 'submit', testid: 'devices-filter-apply', class: 'primary' }, 'Apply'));

  const req = { pageSize: 50, pageToken: q.get('page') || '' };
  if (q.get('selector')) req.labelSelector = q.get('selector');
  if (q.get('bundle')) req.bundle = q.get('bundle');
  if (q.get('status')) req.jobStatus = `JOB_STATUS_${q.get('status')}`;
  if (seen) req.seenBefore = seen;
  const res = await fleet.ListDevices(req, { signal: ctx.signal });
  const devices = res.devices || [];
  const page = (token) => { const p = new URLSearchParams(q); if (token) p.set('page', token); else p.delete('page'); return `#/devices?${p}`; };
  add(ctx.root, h('h1', {}, 'Devices'), form,
    h('table', { class: 'table', testid: 'devices-table' },
      h('thead', {}, h('tr', {}, ['Device', 'Labels', 'Bundle', 'Job', 'Step', 'Last seen'].map((c) => h('th', {}, c)))),
      h('tbody', {}, devices.map((d) => h('tr', { testid: 'device-row', 'data-device-id': d.id },
        h('td', {}, h('a', { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id)),
        h('td', {}, kv(d.labels)),
        h('td', {}, d.reported?.state?.bundle?.targetPath || '(none)'),
        h('td', {}, short(d.job?.status) || '—'),
        h('td', {}, short(d.job?.step) || ''),
        h('td', { title: d.lastSeenTime || '' }, ago(d.lastSeenTime)))))),
    devices.length ? null : h('p', { class: 'muted', testid: 'devices-empty' }, 'No devices match.'),
    h('div', { class: 'pager' },
      q.get('page') ? h('a', { href: page(''), testid: 'devices-first' }, '« first page') : null,
      res.nextPageToken ? h('a', { href: page(res.nextPageToken), testid: 'devices-next' }, 'next page »') : null));
}
