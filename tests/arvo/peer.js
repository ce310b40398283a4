// A TypeScript-Arvo peer for tests/test_arvo_node.py, run with node and arvo-core from the
// npm registry. One command per run: JSON in on stdin, JSON out on stdout.
//   init      {n, redirectto?}  -> an init event of arvo.orc.twice made by arvo-core
//   subjects  {}                -> subjects made by ArvoOrchestrationSubject.new and .from
//   serve     request event     -> the reply an arvo-core 2.x handler sends (no parentid)
//   validate  [event, ...]      -> for each: arvo-core's verdict on the event and subject
'use strict';
const { z } = require('zod');
const core = require('arvo-core');

const Number_ = z.object({ n: z.number().int() });
const twice = core.createArvoOrchestratorContract({
  uri: '#/contracts/twice',
  name: 'twice',
  versions: { '1.0.0': { init: Number_, complete: Number_ } },
});
const service = (name) =>
  core.createArvoContract({
    uri: `#/contracts/${name}`,
    type: `com.test.${name}`,
    versions: { '1.0.0': { accepts: Number_, emits: { [`evt.test.${name}.done`]: Number_ } } },
  });
const services = { 'com.test.echo': service('echo'), 'com.test.double': service('double') };
const answer = { 'com.test.echo': (n) => n + 1, 'com.test.double': (n) => n * 2 };

const STANDARD = new Set([
  'id', 'source', 'specversion', 'type', 'subject', 'datacontenttype', 'dataschema', 'data',
  'time', 'to', 'accesscontrol', 'redirectto', 'executionunits', 'traceparent', 'tracestate',
]);

// arvo-core's own constructor: every field validated as is, no re-encoding.
function arvoEvent(json) {
  const context = {};
  const extensions = {};
  for (const [key, value] of Object.entries(json)) {
    if (key === 'data') continue;
    if (STANDARD.has(key)) context[key] = value;
    else extensions[key] = value;
  }
  return new core.ArvoEvent(context, json.data, extensions);
}

function schemaOf(type, dataschema) {
  if (type === twice.type) return twice.version('1.0.0').accepts.schema;
  if (type === `${twice.type}.done`) return twice.version('1.0.0').emits[type];
  if (type.startsWith('sys.')) return core.ArvoErrorSchema;
  if (services[type]) return services[type].version('1.0.0').accepts.schema;
  for (const contract of Object.values(services)) {
    const emits = contract.version('1.0.0').emits;
    if (emits[type]) return emits[type];
  }
  throw new Error(`no contract for type ${type} (dataschema ${dataschema})`);
}

function verdict(json) {
  try {
    const made = arvoEvent(json);
    const recreated = core.createArvoEvent(
      { ...json, data: json.data },
      undefined,
      { disable: true },
    );
    for (const key of ['source', 'subject', 'to', 'redirectto', 'dataschema']) {
      if (recreated[key] !== made[key]) {
        throw new Error(`createArvoEvent changed ${key}: ${made[key]} -> ${recreated[key]}`);
      }
    }
    schemaOf(json.type, json.dataschema).parse(json.data);
    const subject = core.ArvoOrchestrationSubject.parse(json.subject);
    return { id: json.id, ok: true, subject };
  } catch (error) {
    return { id: json.id, ok: false, error: String(error && error.message ? error.message : error) };
  }
}

function run(command, input) {
  switch (command) {
    case 'init': {
      const factory = core.createArvoOrchestratorEventFactory(twice.version('1.0.0'));
      return factory
        .init({
          source: 'com.shop.web',
          data: { n: input.n, parentSubject$$: null },
          ...(input.redirectto ? { redirectto: input.redirectto } : {}),
        })
        .toJSON();
    }
    case 'subjects': {
      const root = core.ArvoOrchestrationSubject.new({
        orchestator: twice.type,
        version: '1.0.0',
        initiator: 'com.shop.web',
        meta: { redirectto: 'com.shop.api' },
      });
      const child = core.ArvoOrchestrationSubject.from({
        orchestator: 'arvo.orc.child',
        version: '2.0.1',
        subject: root,
        meta: { note: 'from arvo' },
      });
      return [root, child].map((subject) => ({
        subject,
        content: core.ArvoOrchestrationSubject.parse(subject),
      }));
    }
    case 'serve': {
      const request = arvoEvent(input);
      const contract = services[request.type];
      if (!contract) throw new Error(`no service for ${request.type}`);
      const versioned = contract.version('1.0.0');
      const data = versioned.accepts.schema.parse(request.data);
      const [type] = Object.keys(versioned.emits);
      // What ArvoEventHandler 2.x does with a handler's output: no parentid.
      return core
        .createArvoEventFactory(versioned)
        .emits({
          type,
          source: contract.type,
          subject: request.subject,
          to: request.redirectto ?? request.source,
          accesscontrol: request.accesscontrol ?? undefined,
          data: { n: answer[request.type](data.n) },
        })
        .toJSON();
    }
    case 'validate':
      return input.map(verdict);
    default:
      throw new Error(`unknown command ${command}`);
  }
}

let raw = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { raw += chunk; });
process.stdin.on('end', () => {
  const out = run(process.argv[2], raw ? JSON.parse(raw) : {});
  process.stdout.write(JSON.stringify(out));
});
