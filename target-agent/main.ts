// The target agent daemon (the same daemon as the source agent; see cli/agent.ts).
import { agentMain } from '../cli/agent.js';

await agentMain('target');
