// The source agent daemon (the same daemon as the target agent; see cli/agent.ts).
import { agentMain } from '../cli/agent.js';

await agentMain('source');
