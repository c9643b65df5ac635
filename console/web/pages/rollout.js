// The rollout page: waves, counts, abort rules and soak, live from
// WatchRollout; pause, resume and cancel; executions by status.

import { rollouts, watch, ROLLOUT } from '../api.js';
import { h, add, replace, num, short, time, ago, duration, badge, fields, EXECUTION_STATUSES } from '../dom.js';

export async function render(ctx) {
  const id = ctx.params[0];
  const live = h('span', { class: 'live', testid: 'rollout-live', 'data-live': 'false' }, 'connecting…');
  const head = h('div', {});
  const controls = h('div', { class: 'actions' });
  const waves = h('div', { class: 'waves' });
  const detail = h('div', {});
  const execBody = h('tbody', {});
  const execFilter = h('select', { testid: 'executions-filter-status', onchange: () => loadExecutions() },
    h('option', { value: '' }, 'all'), EXECUTION_STATUSES.map((s) => h('option', { value: s }, s)));
  add(ctx.root, h('div', { class: 'rollout', testid: 'rollout-page', 'data-rollout-id': id },
    h('div', { class: 'page-head' }, h('h1', {}, 'Rollout'), live), head, controls,
    h('section', { class: 'card' }, h('h2', {}, 'Waves'), waves), detail,
    h('section', { class: 'card', testid: 'rollout-executions' }, h('h2', {}, 'Executions'),
      h('label', {}, 'Status ', execFilter),
      h('table', { class: 'table' }, h('thead', {}, h('tr', {}, ['Device', 'Wave', 'Status', 'Attempts', 'Dispatched', 'Ended', 'Message'].map((c) => h('th', {}, c)))), execBody))));

  async function loadExecutions() {
    const res = await rollouts.ListRolloutExecutions({ rolloutId: id, status: execFilter.value, pageSize: 200 }, { signal: ctx.signal });
    replace(execBody, (res.executions || []).map((e) => h('tr', { testid: 'execution-row', 'data-device-id': e.deviceId, 'data-status': e.status },
      h('td', {}, h('a', { href: `#/devices/${encodeURIComponent(e.deviceId)}` }, e.deviceId)), h('td', {}, num(e.wave) + 1),
      h('td', {}, badge(e.status), e.rolledBack ? ' rolled back' : ''), h('td', {}, e.attempts || 0),
      h('td', {}, time(e.dispatchTime)), h('td', {}, time(e.endTime)), h('td', {}, e.message || ''))));
  }

  const act = (label, testid, method, req) => h('button', { type: 'button', testid, onclick: async (ev) => {
    ev.target.disabled = true;
    try {
      const r = await rollouts[method]({ rolloutId: id, ...req }, { signal: ctx.signal });
      show(r.rollout);
    } catch (err) { ctx.error(err); } finally { ev.target.disabled = false; }
  } }, label);

  function show(r) {
    if (!r) return;
    const counts = r.counts || {};
    replace(head, h('section', { class: 'card' },
      h('h2', {}, r.name || r.id, ' ', h('span', { class: ['badge', `st-${(r.state || '').toLowerCase()}`], testid: 'rollout-state', 'data-state': r.state }, r.state)),
      r.stateReason ? h('p', { testid: 'rollout-state-reason' }, r.stateReason) : null,
      fields([['id', r.id], ['bundle', r.bundle?.targetPath], ['target', r.selector || (r.deviceIds || []).join(', ')],
        ['devices', h('span', { testid: 'rollout-target-count', 'data-value': num(r.targetCount) }, num(r.targetCount))],
        ['created', `${time(r.createTime)} by ${r.createdBy || '?'}`], ['began', time(r.beginTime)], ['ended', time(r.endTime)],
        r.currentRate ? ['rate', `${r.currentRate.toFixed(1)} devices/min`] : null]),
      h('div', { class: 'counts' }, EXECUTION_STATUSES.filter((s) => num(counts[s])).map((s) =>
        h('span', { class: ['count', `st-${s.toLowerCase()}`], testid: `rollout-count-${s}`, 'data-value': num(counts[s]) }, `${s} ${num(counts[s])}`)))));
    const st = r.state;
    const writable = (m) => ctx.can(ROLLOUT, m);
    replace(controls,
      (st === 'RUNNING' || st === 'SCHEDULED') && writable('PauseRollout') ? act('Pause', 'rollout-pause', 'PauseRollout', {}) : null,
      st === 'PAUSED' && writable('ResumeRollout') ? act('Resume', 'rollout-resume', 'ResumeRollout', {}) : null,
      ['RUNNING', 'SCHEDULED', 'PAUSED'].includes(st) && writable('CancelRollout')
        ? [act('Cancel', 'rollout-cancel', 'CancelRollout', { rollback: false }),
          act('Cancel and roll back', 'rollout-cancel-rollback', 'CancelRollout', { rollback: true })] : null);
    replace(waves, (r.waves || []).map((w) => {
      const size = num(w.size), done = num(w.counts?.SUCCEEDED);
      const bar = h('div', { class: 'progress' }, h('div', { class: 'fill' }));
      bar.firstChild.style.width = `${size ? Math.round((100 * done) / size) : 0}%`;
      return h('div', { class: ['wave', `ws-${(w.state || '').toLowerCase()}`], testid: 'rollout-wave', 'data-wave': num(w.index), 'data-state': w.state },
        h('div', { class: 'wave-head' }, h('strong', {}, `Wave ${num(w.index) + 1}`), ' · ', `${size} device${size === 1 ? '' : 's'}`, ' ',
          h('span', { class: 'badge', testid: 'wave-state' }, h('span', { testid: `wave-state-${num(w.index)}` }, w.state))),
        bar,
        h('div', { class: 'muted' }, Object.entries(w.counts || {}).map(([k, v]) => `${k} ${v}`).join(' · ') || 'no executions yet',
          w.state === 'SOAKING' && w.soakEndTime ? ` · soak ends ${ago(w.soakEndTime)}` : ''));
    }));
    const s = r.strategy || {};
    replace(detail, h('div', { class: 'grid2' },
      h('section', { class: 'card', testid: 'rollout-abort-rules' }, h('h2', {}, 'Abort rules'),
        (r.abortRules || []).length ? h('ul', { class: 'plain' }, r.abortRules.map((a) =>
          h('li', {}, `${short(a.status)} ≥ ${a.percent || 0}% once ${num(a.minExecutions)} ended`))) : h('p', { class: 'muted' }, 'none'),
        r.rollbackBundle ? h('p', {}, 'rollback bundle ', r.rollbackBundle.targetPath) : null),
      h('section', { class: 'card', testid: 'rollout-soak' }, h('h2', {}, 'Strategy'), fields([
        ['soak', duration(s.soak) || 'none'], ['most in flight', num(s.maxInFlight) || 'no limit'],
        ['device timeout', duration(s.deviceTimeout) || 'none'], ['retries', s.retries || 0],
        s.rate ? ['rate', `${s.rate.basePerMinute}/min ×${s.rate.factor} after ${num(s.rate.raiseAfterSuccesses)}`] : null,
        ['continuous', r.continuous ? 'yes' : 'no'],
        r.maintenanceWindow ? ['window', `${r.maintenanceWindow.start} for ${duration(r.maintenanceWindow.duration)} ${r.maintenanceWindow.timeZone || 'UTC'}`] : null]))));
  }

  show((await rollouts.GetRollout({ rolloutId: id }, { signal: ctx.signal })).rollout);
  await loadExecutions();

  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; loadExecutions().catch(ctx.error); }, 700);
  };
  ctx.signal.addEventListener('abort', () => clearTimeout(timer));
  (async () => {
    while (!ctx.signal.aborted) {
      let ended = false;
      try {
        live.dataset.live = 'true';
        live.textContent = 'live';
        await watch(ROLLOUT, 'WatchRollout', { rolloutId: id }, {
          signal: ctx.signal,
          onMessage: (m) => { show(m.rollout); soon(); ended = ['COMPLETED', 'ABORTED', 'CANCELED'].includes(m.rollout?.state); },
        });
      } catch (err) {
        if (ctx.signal.aborted) return;
        ctx.error(err);
      }
      live.dataset.live = 'false';
      if (ended) { live.textContent = 'ended'; return; }
      live.textContent = 'reconnecting…';
      await new Promise((r) => setTimeout(r, 3000));
    }
  })();
}
