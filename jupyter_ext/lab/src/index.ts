/**
 * The rexec JupyterLab plugin: the sidebar, the status-bar item, the palette commands and the
 * settings (poll interval, default requirements).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { RexecModel } from './model';
import { RexecPanel } from './panel';
import { RexecStatusItem } from './statusbar';

const PLUGIN_ID = 'rexec-labextension:plugin';

namespace CommandIDs {
  export const start = 'rexec:start';
  export const stop = 'rexec:stop';
  export const status = 'rexec:status';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'rexec: log in, start your remote worker and watch its state.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null
  ) => {
    const model = new RexecModel(2000);
    const panel = new RexecPanel(model);
    app.shell.add(panel, 'left', { rank: 800 });
    restorer?.add(panel, panel.id);

    const show = () => app.shell.activateById(panel.id);
    const failed = (title: string) => (error: Error) => showErrorMessage(title, error.message);

    app.commands.addCommand(CommandIDs.start, {
      label: 'Start remote env',
      caption: 'Start your rexec worker with the requirements of the sidebar',
      execute: () => {
        show();
        return model.start(panel.requirements, '', '').catch(failed('rexec could not start'));
      }
    });
    app.commands.addCommand(CommandIDs.stop, {
      label: 'Stop remote env',
      caption: 'Stop your rexec worker (its namespace is lost)',
      execute: () => model.stop().catch(failed('rexec could not stop'))
    });
    app.commands.addCommand(CommandIDs.status, {
      label: 'Show remote env status',
      caption: 'Open the rexec sidebar with the worker state',
      execute: () => {
        show();
        return model.refresh().catch(failed('rexec status is unavailable'));
      }
    });
    for (const command of [CommandIDs.start, CommandIDs.stop, CommandIDs.status]) {
      palette?.addItem({ command, category: 'rexec' });
    }

    statusBar?.registerStatusItem(PLUGIN_ID, {
      item: new RexecStatusItem(model, show),
      align: 'left',
      rank: 100
    });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            model.interval = settings.get('pollInterval').composite as number;
            panel.defaultRequirements = settings.get('defaultRequirements').composite as string;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => console.error('rexec: cannot load settings', reason));
    }
    void model.refresh().catch(() => undefined);
  }
};

export default plugin;
