#!/usr/bin/env node
// The `lethe` command: runs core/cli.ts through tsx (the sources are TypeScript).
import { tsImport } from 'tsx/esm/api';

await tsImport('../core/cli.ts', import.meta.url);
