/**
 * The sidebar's one source of truth: the last status from the server, kept current by a
 * long poll.
 *
 * `GET status?since=<version>&wait=25` answers as soon as the state differs from the one we
 * have (the server looks four times a second), so a start, a cell that begins or ends, or a
 * restarted worker shows within a second, with one request per change instead of one per
 * interval.  The loop pauses while the browser tab is hidden and backs off after errors.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { IRexecStatus, post, requestAPI } from './api';
import { ShownState } from './contract';

/** What the sidebar shows: the worker's state plus the states only the browser knows. */
export type DisplayState =
  | 'unknown'
  | 'logged-out'
  | 'unreachable'
  | 'error'
  | Exclude<ShownState, 'failed'>;

/** How long one status request may wait for a change, in seconds. */
const WAIT_S = 25;

export class RexecModel {
  /** ``retry``: the first wait after a failed request (it doubles up to a minute). */
  constructor(retry: number) {
    this._retry = retry;
    void this._loop();
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get status(): IRexecStatus | null {
    return this._status;
  }

  /** The last action's failure, one sentence, or null. */
  get error(): string | null {
    return this._error;
  }

  get state(): DisplayState {
    const s = this._status;
    if (this._pending) {
      return 'pending';
    }
    if (s === null) {
      return 'unknown';
    }
    if (!s.logged_in) {
      return 'logged-out';
    }
    if (s.worker === null) {
      return 'unreachable';
    }
    return s.worker.state === 'failed' ? 'error' : s.worker.state;
  }

  /** When the status arrived (ms): the panel counts the uptime on from it. */
  get receivedAt(): number {
    return this._receivedAt;
  }

  /** The panel is shown: look again now (the loop may be waiting out an error). */
  set watched(value: boolean) {
    if (value) {
      this._wake();
    }
  }

  set interval(ms: number) {
    this._retry = ms;
  }

  async refresh(): Promise<void> {
    this._set(await requestAPI<IRexecStatus>('status'));
  }

  login(token: string): Promise<void> {
    return this._act(() => post<{ user: string }>('login', { token }).then(() => this.refresh()));
  }

  /** Log out; ``stopWorker`` stops the worker first (the panel asks). */
  logout(stopWorker = false): Promise<void> {
    return this._act(() =>
      post<IRexecStatus>('logout', { stop_worker: stopWorker }).then(() => this.refresh())
    );
  }

  start(requirements: string, cpu: string, memory: string): Promise<void> {
    this._pending = true;
    this._changed.emit();
    return this._act(() =>
      post<IRexecStatus>('start', { requirements, cpu, memory }).then(s => this._set(s))
    );
  }

  stop(): Promise<void> {
    return this._act(() => post<IRexecStatus>('stop').then(s => this._set(s)));
  }

  dispose(): void {
    this._disposed = true;
    this._wake();
    Signal.clearData(this);
  }

  private async _act(action: () => Promise<void>): Promise<void> {
    this._error = null;
    try {
      await action();
    } catch (error) {
      this._error = (error as Error).message;
      throw error;
    } finally {
      this._pending = false;
      this._changed.emit();
    }
  }

  /** One long poll after another, for the life of the model. */
  private async _loop(): Promise<void> {
    let failures = 0;
    while (!this._disposed) {
      if (document.hidden) {
        await this._sleep(60 * 1000, true);
        continue;
      }
      const since = this._status?.version ?? '';
      const query = since ? `?since=${encodeURIComponent(since)}&wait=${WAIT_S}` : '';
      try {
        const status = await requestAPI<IRexecStatus>(`status${query}`);
        failures = 0;
        if (this._error && !this._pending) {
          this._error = null;
        }
        this._set(status);
      } catch (error) {
        failures += 1;
        this._error = (error as Error).message;
        this._changed.emit();
        await this._sleep(Math.min(this._retry * 2 ** (failures - 1), 60 * 1000), false);
      }
    }
  }

  /** Wait ``ms``, or less when woken (the panel is shown, the tab becomes visible). */
  private _sleep(ms: number, untilVisible: boolean): Promise<void> {
    return new Promise(resolve => {
      const done = () => {
        window.clearTimeout(timer);
        document.removeEventListener('visibilitychange', onVisible);
        this._wakers.delete(done);
        resolve();
      };
      const onVisible = () => {
        if (!document.hidden && untilVisible) {
          done();
        }
      };
      const timer = window.setTimeout(done, ms);
      document.addEventListener('visibilitychange', onVisible);
      this._wakers.add(done);
    });
  }

  private _wake(): void {
    for (const wake of [...this._wakers]) {
      wake();
    }
  }

  private _set(status: IRexecStatus): void {
    this._status = status;
    this._receivedAt = Date.now();
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _disposed = false;
  private _error: string | null = null;
  private _pending = false;
  private _receivedAt = 0;
  private _retry: number;
  private _status: IRexecStatus | null = null;
  private _wakers = new Set<() => void>();
}
