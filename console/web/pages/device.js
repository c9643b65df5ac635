// The device page: desired vs reported state, the job history as a
// timeline, and a job's signed report with its verification.

import { fleet } from '../api.js';
import { h, add, replace, short, time, ago, kv, fields, bytes, badge, base64ToBytes } from '../dom.js';

const FINAL = new Set(['SUCCEEDED', 'FAILED', 'ROLLED_BACK', 'REJECTED', 'TIMED_OUT', 'CANCELED']);

export async function render(ctx) {
  const id = ctx.params[0];
  const [{ device: d = {} }, ev] = await Promise.all([
    fleet.GetDevice({ deviceId: id }, { signal: ctx.signal }),
    fleet.ListDeviceEvents({ deviceId: id, pageSize: 200 }, { signal: ctx.signal }),
  ]);
  const events = ev.events || [];
  const bundle = (b) => (b ? `${b.targetPath} (${bytes(b.length)})` : '(none)');
  const job = d.job || {};
  add(ctx.root, h('div', { class: 'device', testid: 'device-page', 'data-device-id': id },
    h('div', { class: 'page-head' }, h('h1', {}, id), h('span', { class: 'muted' }, 'last seen ', ago(d.lastSeenTime))),
    h('section', { class: 'card', testid: 'device-labels' }, h('h2', {}, 'Labels'), kv(d.labels)),
    h('div', { class: 'grid2' },
      h('section', { class: 'card', testid: 'device-desired' }, h('h2', {}, 'Desired'), fields([
        ['version', d.desired?.version || '0'], ['bundle', bundle(d.desired?.document?.bundle)],
        ['forced', d.desired?.document?.forced ? 'yes' : 'no'], ['config', kv(d.desired?.document?.config)],
        ['job', d.desired?.jobId], ['set by', d.desired?.setBy], ['set', time(d.desired?.setTime)]])),
      h('section', { class: 'card', testid: 'device-reported' }, h('h2', {}, 'Reported'), fields([
        ['version', d.reported?.version || '0'], ['answers desired', d.reported?.desiredVersion || '0'],
        ['bundle', bundle(d.reported?.state?.bundle)], ['config', kv(d.reported?.state?.config)],
        ['agent', d.reported?.agentVersion], ['signed', d.reported?.signed ? 'yes' : 'no'],
        ['reported', time(d.reported?.reportTime)],
        d.claim ? ['claims (unsigned)', bundle(d.claim.state?.bundle)] : null]))),
    h('section', { class: 'card', testid: 'device-job' }, h('h2', {}, 'Current job'), fields([
      ['job', job.id], ['status', badge(job.status, { testid: 'device-job-status' })], ['step', short(job.step)],
      ['code', job.errorCode], ['message', job.message], ['download', short(job.downloadMethod, 'DOWNLOAD_METHOD_')],
      ['received', job.bytesDownloaded ? bytes(job.bytesDownloaded) : ''], ['updated', time(job.updateTime)]])),
    timeline(events),
    attestationSection(ctx, id, d, events)));
}

// timeline groups events by job, oldest step first: each step starts at
// its event and ends at the next one of the same job.
function timeline(events) {
  const jobs = new Map();
  for (const e of [...events].reverse()) {
    const k = e.jobId || '(no job)';
    if (!jobs.has(k)) jobs.set(k, []);
    jobs.get(k).push(e);
  }
  const groups = [...jobs.entries()].reverse().map(([jobId, evs]) => h('div', { class: 'job' },
    h('h3', {}, jobId, evs[0].desiredVersion ? ` · desired v${evs[0].desiredVersion}` : ''),
    h('ol', { class: 'timeline' }, evs.map((e, i) => {
      const end = evs[i + 1]?.time;
      return h('li', { testid: 'timeline-event', 'data-job-id': e.jobId || '', 'data-status': short(e.status), 'data-step': short(e.step),
        class: `st-${(short(e.status) || 'none').toLowerCase()}` },
      h('span', { class: 'dot' }),
      h('div', {}, h('strong', {}, e.kind, ' '), badge(e.status), e.step && e.step !== 'STEP_UNSPECIFIED' ? ` ${short(e.step)}` : '',
        e.errorCode ? h('code', { class: 'code' }, e.errorCode) : null),
      h('div', { class: 'muted' }, 'start ', time(e.time), end ? ` · end ${time(end)}` : '', e.actor ? ` · by ${e.actor}` : ''),
      e.message ? h('div', {}, e.message) : null);
    }))));
  return h('section', { class: 'card', testid: 'device-timeline' }, h('h2', {}, 'Job history'),
    groups.length ? groups : h('p', { class: 'muted' }, 'No events yet.'));
}

function attestationSection(ctx, id, d, events) {
  const jobIds = [...new Set([d.job?.id, ...events.filter((e) => FINAL.has(short(e.status))).map((e) => e.jobId)].filter(Boolean))];
  const body = h('div', {});
  const select = h('select', { testid: 'attestation-job', onchange: () => show(select.value) },
    jobIds.map((j) => h('option', { value: j }, j)));
  async function show(jobId) {
    replace(body, h('p', { class: 'muted' }, 'loading…'));
    try {
      const a = await fleet.GetAttestation({ deviceId: id, jobId }, { signal: ctx.signal });
      replace(body, renderAttestation(a));
    } catch (err) {
      if (err.code === 'not_found') replace(body, h('p', { class: 'muted' }, 'No signed report for this job.'));
      else replace(body, h('p', { class: 'form-error' }, String(err)));
    }
  }
  if (jobIds.length) show(jobIds[0]);
  return h('section', { class: 'card', testid: 'device-attestation' }, h('h2', {}, 'Signed report'),
    jobIds.length ? h('label', {}, 'Job ', select) : h('p', { class: 'muted' }, 'No jobs yet.'), body);
}

function renderAttestation(a) {
  const verified = a.verified === true;
  let statement = a.statementJson || '';
  if (!statement && a.envelope) {
    try {
      const env = JSON.parse(new TextDecoder().decode(base64ToBytes(a.envelope)));
      statement = new TextDecoder().decode(base64ToBytes(env.payload));
    } catch { statement = ''; }
  }
  try { statement = JSON.stringify(JSON.parse(statement), null, 2); } catch { /* keep as sent */ }
  const certs = a.certificates || [];
  return h('div', {},
    h('p', {}, h('span', { class: ['badge', verified ? 'ok' : 'bad'], testid: 'attestation-verified', 'data-verified': String(verified) },
      verified ? 'verified' : 'not verified'),
    verified ? ' against the device CA' : ''),
    a.verificationError ? h('p', { class: 'form-error', testid: 'attestation-error' }, a.verificationError) : null,
    h('h3', {}, 'Certificate chain'),
    h('ol', { class: 'chain', testid: 'attestation-chain' }, certs.length
      ? certs.map((c) => h('li', { testid: 'attestation-cert' }, fields([
        ['subject', c.subject], ['issuer', c.issuer], ['serial', c.serialNumber], ['URIs', (c.uris || []).join(', ')],
        ['valid', `${time(c.notBefore)} – ${time(c.notAfter)}`], ['SHA-256', h('code', {}, c.sha256Fingerprint || '')]])))
      : (a.certificateChain || []).map((der, i) => h('li', { testid: 'attestation-cert' }, `certificate ${i + 1}: ${bytes(base64ToBytes(der).length)} DER`))),
    h('h3', {}, 'In-toto statement'),
    h('pre', { class: 'json', testid: 'attestation-statement' }, statement || '—'));
}
