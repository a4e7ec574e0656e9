// The official openai Node SDK against memgate: one plain and one streamed request through
// the memory endpoint, with the namespace in the path. Prints one JSON object.
// Usage: node tests/node/sdk.mjs BASE_URL   (or MEMGATE_BASE_URL), e.g.
//        node tests/node/sdk.mjs http://127.0.0.1:11435/v1/memory/ns/alice
import OpenAI from "openai";

const baseURL = process.argv[2] || process.env.MEMGATE_BASE_URL;
if (!baseURL) {
  console.error("usage: node sdk.mjs BASE_URL (e.g. http://127.0.0.1:11435/v1/memory/ns/alice)");
  process.exit(2);
}
const model = process.env.MEMGATE_MODEL || "fake-model";
const client = new OpenAI({
  baseURL,
  apiKey: process.env.MEMGATE_API_KEY || "unused",
  maxRetries: 0,
  timeout: 60_000,
});

try {
  const { data: plain, response } = await client.chat.completions
    .create({ model, messages: [{ role: "user", content: "My dog is called Pixel." }] })
    .withResponse();

  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "What is my dog called?" }],
    stream: true,
  });
  let text = "";
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += choice.delta?.content ?? "";
    finish = choice.finish_reason ?? finish;
  }

  console.log(
    JSON.stringify({
      plain: {
        content: plain.choices[0].message.content,
        finish_reason: plain.choices[0].finish_reason,
        namespace: response.headers.get("x-memory-namespace"),
        recalled: response.headers.get("x-memory-recalled"),
      },
      stream: { content: text, chunks, finish_reason: finish },
    }),
  );
} catch (err) {
  console.error(`openai SDK error: ${err.status ?? ""} ${err.message}`);
  process.exit(1);
}
