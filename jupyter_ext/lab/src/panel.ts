/**
 * The left sidebar panel: log in / out, "Start remote env" with requirements and resources,
 * the worker's live state and details, Stop.
 *
 * The DOM is built once and updated from the model, so what the user types survives polls.
 * While the panel is hidden the model is told nobody watches, and polling stands by.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { DisplayState, RexecModel } from './model';
import { rexecIcon } from './icon';

/** The words the sidebar and the status bar use for each state. */
export const STATE_LABELS: Record<DisplayState, string> = {
  unknown: 'unknown',
  'logged-out': 'logged out',
  unreachable: 'spawner unreachable',
  stopped: 'stopped',
  culled: 'stopped (idle)',
  pending: 'pending',
  starting: 'starting',
  installing: 'installing',
  ready: 'ready',
  busy: 'busy',
  error: 'error'
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

function button(label: string, accept: boolean, onClick: () => void): HTMLButtonElement {
  const node = el('button', `jp-Button jp-mod-styled ${accept ? 'jp-mod-accept' : 'jp-mod-reject'}`, label);
  node.addEventListener('click', onClick);
  return node;
}

function input(label: string, node: HTMLInputElement | HTMLTextAreaElement): HTMLLabelElement {
  const wrap = el('label', 'jp-rexec-field', label);
  node.classList.add('jp-mod-styled');
  wrap.appendChild(node);
  return wrap;
}

export function formatSeconds(seconds: number): string {
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${s % 60} s`;
  }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A number with its unit ("2106 MB", "6 min 4 s", "3.11", "127.0.0.1"): never split. */
const FIGURE = /\d[\d.]*(?: (?:MB|h|min|s)\b(?: \d+ (?:min|s)\b)?)?/g;

/**
 * A value of the details list: its figures in spans that do not wrap (`.jp-rexec-figure`),
 * the rest free to wrap anywhere, so a long notebook name, host or requirement breaks to fit
 * while "2106 MB" never reads "21 / 06 MB".
 */
function valueNode(text: string): HTMLElement {
  const node = el('dd', '');
  let at = 0;
  for (const match of text.matchAll(FIGURE)) {
    node.append(text.slice(at, match.index), el('span', 'jp-rexec-figure', match[0]));
    at = match.index! + match[0].length;
  }
  node.append(text.slice(at));
  return node;
}

export class RexecPanel extends Widget {
  constructor(model: RexecModel) {
    super();
    this.model = model;
    this.id = 'rexec-sidebar';
    this.title.icon = rexecIcon;
    this.title.caption = 'rexec: your remote worker';
    this.addClass('jp-rexec-Panel');
    this._build();
    model.changed.connect(this._render, this);
    this._render();
  }

  readonly model: RexecModel;

  /** Fill the requirements box (from the settings) unless the user typed something. */
  set defaultRequirements(text: string) {
    if (!this._requirements.value || this._requirements.value === this._defaultRequirements) {
      this._requirements.value = text;
    }
    this._defaultRequirements = text;
  }

  get requirements(): string {
    return this._requirements.value;
  }

  protected onAfterShow(msg: Message): void {
    this.model.watched = true;
    // The uptime counts on between status changes (the server only answers on a change).
    this._ticker = window.setInterval(() => this._render(), 1000);
  }

  protected onAfterHide(msg: Message): void {
    this.model.watched = false;
    window.clearInterval(this._ticker);
  }

  /** Log out; when a worker runs, ask whether to stop it (it would go on running). */
  private async _logout(): Promise<void> {
    const active = ['starting', 'installing', 'ready', 'busy'].includes(this.model.state);
    if (!active) {
      return this.model.logout(false);
    }
    const result = await showDialog({
      title: 'Log out of rexec',
      body: 'Your remote worker is still running. Stop it (its variables are lost), or keep it running for your next login?',
      buttons: [
        Dialog.cancelButton({ label: 'Cancel' }),
        Dialog.okButton({ label: 'Keep it running', displayType: 'default' }),
        Dialog.warnButton({ label: 'Stop worker' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    return this.model.logout(result.button.displayType === 'warn');
  }

  private _build(): void {
    const root = this.node;
    root.appendChild(el('h2', 'jp-rexec-title', 'Remote env'));

    this._token.type = 'password';
    this._token.placeholder = 'rexec token';
    this._token.autocomplete = 'off';
    this._token.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        this._login();
      }
    });
    this._loginBox.append(input('Token', this._token), button('Log in', true, () => this._login()));
    this._accountBox.append(this._account, button('Log out', false, () => this._run(this._logout())));

    this._stateLine.append(this._dot, this._stateText);
    this._stateBox.append(
      this._stateLine,
      this._message,
      this._restarted,
      this._progress,
      this._details,
      this._logLast,
      this._log
    );
    this._progress.appendChild(el('div', 'jp-rexec-progress-bar'));

    this._requirements.rows = 4;
    this._requirements.placeholder = 'numpy>=1.26\npython==3.11';
    this._cpu.placeholder = 'e.g. 2';
    this._memory.placeholder = 'e.g. 4G';
    const resources = el('div', 'jp-rexec-resources');
    resources.append(input('CPU', this._cpu), input('Memory', this._memory));
    this._startBox.append(
      input('Requirements (optional, one per line)', this._requirements),
      resources,
      button('Start remote env', true, () =>
        this._run(this.model.start(this._requirements.value, this._cpu.value, this._memory.value))
      )
    );
    this._stopBox.appendChild(button('Stop', false, () => this._run(this.model.stop())));

    root.append(this._loginBox, this._accountBox, this._stateBox, this._startBox, this._stopBox, this._error);
  }

  private _login(): void {
    const token = this._token.value;
    this._run(this.model.login(token).then(() => (this._token.value = '')));
  }

  /** Errors are already in the model (and shown); only keep them out of the console. */
  private _run(action: Promise<unknown>): void {
    action.catch(() => undefined);
  }

  private _render(): void {
    const model = this.model;
    const status = model.status;
    const state = model.state;
    const loggedIn = !!status?.logged_in;
    const worker = status?.worker ?? null;
    const active = ['pending', 'starting', 'installing', 'ready', 'busy'].includes(state);

    this._loginBox.hidden = loggedIn || status === null;
    this._accountBox.hidden = !loggedIn;
    this._account.textContent = `Logged in as ${status?.user ?? ''}`;
    this._stateBox.hidden = !loggedIn;
    this._startBox.hidden = !loggedIn || active;
    this._stopBox.hidden = !loggedIn || !active || state === 'pending';

    this.node.dataset.state = state;
    this._dot.className = `jp-rexec-dot jp-rexec-dot-${state}`;
    const restarted = worker?.restarted ?? '';
    const live = state === 'ready' || state === 'busy';
    this._stateText.textContent = STATE_LABELS[state] + (restarted && live ? ' (restarted)' : '');
    this._restarted.hidden = !(restarted && live);
    this._restarted.textContent = restarted;
    this._message.textContent = state === 'unreachable' ? status?.error ?? '' : worker?.message ?? '';
    this._progress.hidden = !['pending', 'starting', 'installing'].includes(state);

    this._details.replaceChildren();
    if (worker && (state === 'ready' || state === 'busy')) {
      const rows: [string, string][] = [
        ['Python', worker.python ?? '?'],
        [
          'Uptime',
          worker.uptime_s === null
            ? '?'
            : formatSeconds(worker.uptime_s + (Date.now() - model.receivedAt) / 1000)
        ],
        ['Runs', worker.where]
      ];
      if (worker.requirements.length) {
        rows.push(['Requirements', worker.requirements.join(', ')]);
      }
      for (const ex of worker.executors ?? []) {
        const memory = ex.memory === null ? '' : `, ${(ex.memory / 2 ** 20).toFixed(0)} MB`;
        rows.push([`Notebook ${ex.notebook}`, `${ex.state}${memory}`]);
      }
      for (const [key, value] of rows) {
        this._details.append(el('dt', '', key), valueNode(value));
      }
    }
    // The end of the log first: the error line (pip's, a traceback's) is its last line.
    const tail = state === 'error' ? worker?.log_tail ?? [] : [];
    this._log.hidden = tail.length === 0;
    this._logLast.hidden = tail.length === 0;
    this._logLast.textContent = tail.length ? tail[tail.length - 1] : '';
    if (this._log.textContent !== tail.join('\n')) {
      this._log.textContent = tail.join('\n');
      this._log.scrollTop = this._log.scrollHeight;
    }

    this._error.hidden = !model.error;
    this._error.textContent = model.error ?? '';
  }

  private _account = el('span', 'jp-rexec-account');
  private _accountBox = el('div', 'jp-rexec-section jp-rexec-account-box');
  private _cpu = el('input', 'jp-rexec-cpu');
  private _defaultRequirements = '';
  private _details = el('dl', 'jp-rexec-details');
  private _dot = el('span', 'jp-rexec-dot');
  private _error = el('div', 'jp-rexec-error');
  private _log = el('pre', 'jp-rexec-log');
  private _logLast = el('div', 'jp-rexec-log-last');
  private _restarted = el('div', 'jp-rexec-restarted');
  private _ticker = 0;
  private _loginBox = el('div', 'jp-rexec-section jp-rexec-login-box');
  private _memory = el('input', 'jp-rexec-memory');
  private _message = el('div', 'jp-rexec-message');
  private _progress = el('div', 'jp-rexec-progress');
  private _requirements = el('textarea', 'jp-rexec-requirements');
  private _startBox = el('div', 'jp-rexec-section jp-rexec-start-box');
  private _stateBox = el('div', 'jp-rexec-section jp-rexec-state-box');
  private _stateLine = el('div', 'jp-rexec-state-line');
  private _stateText = el('span', 'jp-rexec-state');
  private _stopBox = el('div', 'jp-rexec-section jp-rexec-stop-box');
  private _token = el('input', 'jp-rexec-token');
}
