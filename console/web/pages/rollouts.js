// The rollout list, newest first.

import { rollouts, ROLLOUT } from '../api.js';
import { h, add, num, time, badge } from '../dom.js';

export async function render(ctx) {
  const res = await rollouts.ListRollouts({ pageSize: 100, pageToken: ctx.query.get('page') || '' }, { signal: ctx.signal });
  const list = res.rollouts || [];
  add(ctx.root, 
    h('div', { class: 'page-head' }, h('h1', {}, 'Rollouts'),
      ctx.can(ROLLOUT, 'CreateRollout') ? h('a', { class: 'button primary', href: '#/rollouts/new', testid: 'rollout-new' }, 'New rollout') : null),
    h('table', { class: 'table', testid: 'rollouts-table' },
      h('thead', {}, h('tr', {}, ['Rollout', 'State', 'Bundle', 'Target', 'Succeeded', 'Created'].map((c) => h('th', {}, c)))),
      h('tbody', {}, list.map((r) => h('tr', { testid: 'rollout-row', 'data-rollout-id': r.id, 'data-state': r.state },
        h('td', {}, h('a', { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.name || r.id), h('div', { class: 'muted' }, r.id)),
        h('td', {}, badge(r.state)), h('td', {}, r.bundle?.targetPath || ''),
        h('td', {}, r.selector || (r.deviceIds || []).join(', ')),
        h('td', {}, `${num(r.counts?.SUCCEEDED)} / ${num(r.targetCount)}`),
        h('td', {}, time(r.createTime), h('div', { class: 'muted' }, r.createdBy || '')))))),
    list.length ? null : h('p', { class: 'muted' }, 'No rollouts yet.'),
    res.nextPageToken ? h('div', { class: 'pager' }, h('a', { testid: 'rollouts-next', href: `#/rollouts?page=${encodeURIComponent(res.nextPageToken)}` }, 'next page »')) : null);
}
