// Runs a few training steps inside a worker thread and posts the losses back.
import { parentPort, workerData } from 'node:worker_threads';
import { buildRegressionTrainer } from './training-tasks.ts';

const { trainer, batch } = await buildRegressionTrainer(workerData.seed as number);
const losses: number[] = [];
for (let s = 0; s < (workerData.steps as number); s++) losses.push((await trainer.run(batch())).loss);
parentPort!.postMessage({ losses, provider: trainer.provider });
