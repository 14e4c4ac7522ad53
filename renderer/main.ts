import { mount } from 'svelte';
import App from './App.svelte';
import { Studio } from './state/studio.svelte.ts';
import './styles.css';

const studio = new Studio();
const target = document.getElementById('app');
if (!target) throw new Error('index.html has no #app element.');
mount(App, { target, props: { studio } });
void studio.start();
