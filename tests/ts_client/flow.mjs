// The official TypeScript SDK against a Tether gateway: what works in the Python SDK must work
// here. Prints one JSON object of what it saw; tests/test_ts_client.py checks it.
// Environment: TETHER_URL, TETHER_API_KEY, TETHER_MARKER (system prompt the scripted model knows).
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({
  baseURL: process.env.TETHER_URL,
  apiKey: process.env.TETHER_API_KEY,
  maxRetries: 0,
  timeout: 60_000,
});
const marker = process.env.TETHER_MARKER;
const text = (t) => [{ type: 'text', text: t }];
const out = {};

async function failure(call) {
  try {
    await call();
    return null;
  } catch (error) {
    return { name: error.constructor.name, status: error.status, type: error.error?.error?.type ?? null };
  }
}

const agent = await client.beta.agents.create({ name: 'ts-agent', model: 'claude-sonnet-4-6', system: marker });
const environment = await client.beta.environments.create({ name: 'ts-env' });
const session = await client.beta.sessions.create({ agent: agent.id, environment_id: environment.id });
out.session = { id: session.id, status: session.status, agentVersion: session.agent.version };

// Open the stream first: it carries what happens after it opened.
const stream = await client.beta.sessions.events.stream(session.id);
const sent = await client.beta.sessions.events.send(session.id, {
  events: [{ type: 'user.message', content: text('hello from typescript') }],
});
out.sentTypes = sent.data.map((event) => event.type);
out.streamed = [];
for await (const event of stream) {
  out.streamed.push({ type: event.type, text: event.content?.map((block) => block.text).join('') ?? null });
  if (event.type === 'session.status_idle') {
    out.stopReason = event.stop_reason.type;
    break;
  }
}

// Auto-pagination over a cursor page of two.
out.listed = [];
for await (const event of client.beta.sessions.events.list(session.id, { limit: 2 })) {
  out.listed.push(event.type);
}
out.retrieved = (await client.beta.sessions.retrieve(session.id)).status;

out.notFound = await failure(() => client.beta.agents.retrieve('agent_doesnotexist0000000000'));
out.badRequest = await failure(() =>
  client.beta.sessions.events.send(session.id, { events: [{ type: 'user.message', content: [] }] }),
);
out.unauthorized = await failure(() =>
  new Anthropic({ baseURL: process.env.TETHER_URL, apiKey: 'wrong', maxRetries: 0 }).beta.agents.list(),
);

const deployment = await client.beta.deployments.create({
  name: 'ts-deployment',
  agent: agent.id,
  environment_id: environment.id,
  initial_events: [{ type: 'user.message', content: text('deployed from typescript') }],
  schedule: { type: 'cron', expression: '30 4 29 2 *', timezone: 'Asia/Tokyo' },
});
out.deployment = {
  id: deployment.id,
  agent: deployment.agent,
  upcoming: deployment.schedule.upcoming_runs_at,
};
const run = await client.beta.deployments.run(deployment.id);
out.run = { id: run.id, trigger: run.trigger_context.type, sessionId: run.session_id, error: run.error };
out.runs = [];
for await (const listed of client.beta.deploymentRuns.list({ deployment_id: deployment.id })) {
  out.runs.push(listed.id);
}
out.badSchedule = await failure(() =>
  client.beta.deployments.update(deployment.id, {
    schedule: { type: 'cron', expression: '@daily', timezone: 'UTC' },
  }),
);

// A budgeted session, a message with a system message, and an outcome the grader cannot judge.
const budgeted = await client.beta.sessions.create({
  agent: agent.id,
  environment_id: environment.id,
  budget: { type: 'limit', max_list_cost: { amount: '500', currency: 'USD' } },
});
out.budget = budgeted.budget.max_list_cost.amount;
const raised = await client.beta.sessions.update(budgeted.id, {
  budget: { type: 'limit', max_list_cost: { amount: '900', currency: 'USD' } },
});
out.raised = raised.budget.max_list_cost.amount;
const turn = await client.beta.sessions.events.stream(budgeted.id);
await client.beta.sessions.events.send(budgeted.id, {
  events: [
    { type: 'user.message', content: text('second session') },
    { type: 'system.message', content: text('Be brief.') },
  ],
});
out.secondTurn = [];
for await (const event of turn) {
  out.secondTurn.push(event.type === 'session.status_idle' ? `idle:${event.stop_reason.type}` : event.type);
  if (event.type === 'session.status_idle') break;
}
const spent = await client.beta.sessions.retrieve(budgeted.id);
out.listCost = spent.usage.list_cost?.amount ?? null;
const outcome = await client.beta.sessions.events.send(budgeted.id, {
  events: [{ type: 'user.define_outcome', description: 'a haiku', rubric: { type: 'text', content: 'five-seven-five' } }],
});
out.outcomeId = outcome.data[0].outcome_id;
out.outcomeSession = budgeted.id;

const vault = await client.beta.vaults.create({ display_name: 'ts-vault' });
out.vault = { id: vault.id, archived: (await client.beta.vaults.archive(vault.id)).archived_at !== null };

console.log(JSON.stringify(out));
