/**
 * The server extension's REST API (`/rexec/api/...`), through `ServerConnection` so that
 * Jupyter's own auth and XSRF apply.  A failure becomes a `RexecAPIError` whose message is the
 * one sentence the server sent.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ShownState } from './contract';

/** The worker states the server reports (the spawner's, plus busy and culled). */
export type WorkerState = Exclude<ShownState, 'pending'>;

/** What the server tells about the worker (never a token). */
export interface IWorkerInfo {
  state: WorkerState;
  message: string;
  python: string | null;
  pid: number | null;
  started_at: string | null;
  ready_at: string | null;
  restarts: number;
  requirements: string[];
  log_tail: string[];
  uptime_s: number | null;
  where: string;
  last_exit_at?: string | null;
  last_exit_reason?: string | null;
  /** "Your worker restarted at 14:02 (killed by signal 9); its namespace was lost." */
  restarted?: string;
  /** One row per notebook namespace on the worker (absent from older servers). */
  executors?: IExecutorInfo[];
}

/** One executor of the worker: the namespace of one notebook (or a shared one). */
export interface IExecutorInfo {
  notebook: string;
  state: string;
  memory: number | null;
  pid: number;
  uptime_s: number;
  running_s?: number;
}

/** `GET /rexec/api/status`, and the answer of every action. */
export interface IRexecStatus {
  logged_in: boolean;
  user: string | null;
  worker: IWorkerInfo | null;
  /** Why the worker's state is unknown (spawner down...), or null. */
  error: string | null;
  /** Identifies this status; `GET status?since=version&wait=S` answers once it changes. */
  version?: string;
}

export class RexecAPIError extends Error {}

export async function requestAPI<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'rexec', 'api', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new RexecAPIError('The Jupyter server is not reachable.');
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.message || `The Jupyter server answered HTTP ${response.status}.`;
    throw new RexecAPIError(message);
  }
  return data as T;
}

export function post<T>(endpoint: string, body: object = {}): Promise<T> {
  return requestAPI<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}
