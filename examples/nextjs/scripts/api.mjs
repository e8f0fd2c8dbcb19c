// Starts the real financeATP API on a temporary PostgreSQL cluster (scripts/api_server.py) and
// resolves to { url, key, admin_key, stop() } once it answers. Python: $PY, else the repository's
// .venv (make venv), else python3.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = path.resolve(EXAMPLE, '..', '..');

export function python() {
  if (process.env.PY) return process.env.PY;
  const venv = path.join(ROOT, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

export function startApi({ timeoutMs = 180_000 } = {}) {
  const child = spawn(python(), [path.join(EXAMPLE, 'scripts', 'api_server.py')], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.stdin.end(); // api_server.py stops when its stdin closes
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error('the API did not start in time'));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`scripts/api_server.py exited with ${code} before it was ready`));
    });
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      resolve({ ...JSON.parse(line), stop });
    });
  });
}
