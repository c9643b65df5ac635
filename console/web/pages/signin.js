// The sign-in page: an operator API key, or the browser's client
// certificate.

import { h } from '../dom.js';
import { ConnectError } from '../connect.js';

export function render({ root, signIn }) {
  const key = h('input', {
    type: 'password', id: 'signin-key', testid: 'signin-key', autocomplete: 'off',
    placeholder: 'operator API key', required: true, spellcheck: 'false',
  });
  const error = h('p', { class: 'form-error', testid: 'signin-error', hidden: true });
  const submit = h('button', { type: 'submit', testid: 'signin-submit', class: 'primary' }, 'Sign in');
  const cert = h('button', { type: 'button', testid: 'signin-cert' }, 'Use my client certificate');

  async function attempt(c, button) {
    error.hidden = true;
    button.disabled = true;
    try {
      await signIn(c);
    } catch (err) {
      const e = ConnectError.from(err);
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  const form = h('form', {
    class: 'card signin', testid: 'signin-form',
    onsubmit: (ev) => {
      ev.preventDefault();
      const v = key.value.trim();
      if (v) attempt({ mode: 'key', key: v }, submit);
    },
  },
  h('h1', {}, 'Sign in to Ferry'),
  h('label', { for: 'signin-key' }, 'API key'),
  key,
  h('p', { class: 'hint' }, 'Kept for this tab only: closing it signs you out.'),
  h('div', { class: 'actions' }, submit, h('span', { class: 'muted' }, 'or'), cert),
  error);
  cert.addEventListener('click', () => attempt({ mode: 'cert' }, cert));
  root.append(form);
  key.focus();
}
