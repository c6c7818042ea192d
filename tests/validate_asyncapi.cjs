// Validate an AsyncAPI document with the official parser (+ its Avro schema parser).
// Usage: node validate_asyncapi.cjs <dir holding node_modules> <document>
// Prints {"diagnostics": [...], "messages": {...}} as JSON; exits 1 on any error.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

async function main() {
  const [toolsDir, documentPath] = process.argv.slice(2);
  if (!toolsDir || !documentPath) {
    throw new Error("usage: validate_asyncapi.cjs <tools dir> <document>");
  }
  const load = createRequire(path.join(path.resolve(toolsDir), "package.json"));
  const { Parser } = load("@asyncapi/parser");
  const { AvroSchemaParser } = load("@asyncapi/avro-schema-parser");
  const parser = new Parser();
  parser.registerSchemaParser(AvroSchemaParser());
  const { document, diagnostics } = await parser.parse(fs.readFileSync(documentPath, "utf8"), {
    source: path.resolve(documentPath),
  });
  const severities = ["error", "warning", "info", "hint"];
  const report = {
    diagnostics: diagnostics.map((d) => ({
      severity: severities[d.severity] || String(d.severity),
      code: d.code,
      message: d.message,
      path: d.path.join("/"),
    })),
    messages: {},
  };
  if (document) {
    // Proof the Avro payloads were parsed: the parser turns each into a JSON schema.
    for (const message of document.allMessages().all()) {
      const payload = message.payload();
      report.messages[message.id()] = {
        schemaFormat: message.schemaFormat(),
        type: payload ? payload.type() : null,
        properties: payload ? Object.keys(payload.properties() || {}) : [],
      };
    }
  }
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  const failed = !document || report.diagnostics.some((d) => d.severity === "error");
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  process.stderr.write(`validate_asyncapi: ${err.stack || err}\n`);
  process.exit(2);
});
