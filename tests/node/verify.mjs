// Verifies webhooks with the standardwebhooks npm package, an implementation
// independent of the relay's Python code. Reads a JSON array of
// {secret, body_base64, headers} from stdin and prints one line per item:
// "ok <type>" when the signature verifies, "fail <message>" otherwise.
import { Webhook } from "standardwebhooks";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const items = JSON.parse(Buffer.concat(chunks).toString("utf8"));

for (const item of items) {
  const body = Buffer.from(item.body_base64, "base64").toString("utf8");
  try {
    const payload = new Webhook(item.secret).verify(body, item.headers);
    console.log(`ok ${payload.type}`);
  } catch (error) {
    console.log(`fail ${error.message}`);
  }
}
