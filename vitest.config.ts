import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // onnxruntime sessions are heavy; two cores here, so keep the pool small.
    pool: 'forks',
    maxWorkers: 2,
  },
});
