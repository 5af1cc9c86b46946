/** The status-bar item: "rexec: ready" with the state's colour; a click opens the sidebar. */
import { Widget } from '@lumino/widgets';

import { RexecModel } from './model';
import { STATE_LABELS } from './panel';

export class RexecStatusItem extends Widget {
  constructor(model: RexecModel, onClick: () => void) {
    super();
    this.addClass('jp-rexec-StatusItem');
    this.node.title = 'rexec: your remote worker (click to open the sidebar)';
    this.node.addEventListener('click', onClick);
    this._model = model;
    model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const state = this._model.state;
    this.node.dataset.state = state;
    this.node.replaceChildren();
    const dot = document.createElement('span');
    dot.className = `jp-rexec-dot jp-rexec-dot-${state}`;
    const text = document.createElement('span');
    const restarted = ['ready', 'busy'].includes(state) && !!this._model.status?.worker?.restarted;
    text.textContent = `rexec: ${STATE_LABELS[state]}${restarted ? ' (restarted)' : ''}`;
    this.node.append(dot, text);
  }

  private _model: RexecModel;
}
