/**
 * The sidebar's one source of truth: the last status from the server, polled with backoff.
 *
 * The panel and the status-bar item only render this model; polling stands by while no one
 * watches (the panel is hidden) and runs faster while the worker is on its way up.
 */
import { Poll } from '@lumino/polling';
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

const FAST_MS = 1000;

export class RexecModel {
  constructor(interval: number) {
    this._interval = interval;
    this._poll = new Poll({
      auto: true,
      factory: () => this._tick(),
      frequency: { interval, backoff: true, max: 60 * 1000 },
      name: 'rexec:status',
      standby: () => (this._watched ? 'when-hidden' : true)
    });
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

  /** Poll only while someone looks (the panel is shown). */
  set watched(value: boolean) {
    this._watched = value;
    if (value) {
      void this._poll.refresh();
    }
  }

  set interval(ms: number) {
    this._interval = ms;
    this._adjust();
  }

  async refresh(): Promise<void> {
    this._set(await requestAPI<IRexecStatus>('status'));
  }

  login(token: string): Promise<void> {
    return this._act(() => post<{ user: string }>('login', { token }).then(() => this.refresh()));
  }

  logout(): Promise<void> {
    return this._act(() => post<IRexecStatus>('logout').then(() => this.refresh()));
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
    this._poll.dispose();
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
      this._adjust();
      this._changed.emit();
    }
  }

  private async _tick(): Promise<void> {
    try {
      await this.refresh();
    } catch (error) {
      this._error = (error as Error).message;
      this._changed.emit();
      throw error; // the poll backs off
    }
  }

  private _set(status: IRexecStatus): void {
    this._status = status;
    this._adjust();
    this._changed.emit();
  }

  /** Poll fast while the worker comes up, at the configured pace otherwise. */
  private _adjust(): void {
    const moving = ['pending', 'starting', 'installing'].includes(this.state);
    const interval = moving ? FAST_MS : this._interval;
    if (this._poll.frequency.interval !== interval) {
      this._poll.frequency = { ...this._poll.frequency, interval };
    }
  }

  private _changed = new Signal<this, void>(this);
  private _error: string | null = null;
  private _interval: number;
  private _pending = false;
  private _poll: Poll;
  private _status: IRexecStatus | null = null;
  private _watched = false;
}
