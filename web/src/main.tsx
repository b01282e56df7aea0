import { createRoot } from 'react-dom/client';

import { App } from './app';
import { loadConfig } from './config';

const root = createRoot(document.getElementById('root') as HTMLElement);

loadConfig().then(
  (config) => root.render(<App config={config} />),
  (error: unknown) =>
    root.render(
      <p className="fatal" data-testid="fatal">
        cannot load the worker's web configuration: {String(error)}
      </p>,
    ),
);
