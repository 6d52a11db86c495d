// Register a ModelGates job with the relay, read it back, list its delivery
// attempts and delete it, with the fetch API of Node.js 18 or newer.
//
//   RELAY_URL=http://127.0.0.1:8000 RELAY_API_KEY=... node client.js
//
// RELAY_JOB_ID sets the job ID. The default is a script that the simulator
// of `relay dev` runs. The webhook goes to a receiver on 127.0.0.1:9000.

const CALLBACK_URL = "http://127.0.0.1:9000/webhooks";
const DEFAULT_JOB_ID = "sim.pending*2.in_progress.completed";

interface Registration {
  id: string;
  state: string;
  upstream: { polls: number };
}

interface AttemptList {
  attempts: unknown[];
}

// An error response of the relay (RFC 9457 problem details).
interface Problem {
  title: string;
  status: number;
  detail: string;
}

class RelayError extends Error {}

class RelayClient {
  constructor(
    private readonly baseUrl: string,
    private readonly apiKey: string,
  ) {}

  // Send one request and return its JSON body, or undefined for 204.
  async request<T>(method: string, path: string, body?: object): Promise<T> {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.apiKey}`,
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
    }
    const response = await fetch(new URL(path, this.baseUrl), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    if (!response.ok) {
      const text = await response.text();
      let detail = text;
      try {
        detail = (JSON.parse(text) as Problem).detail ?? text;
      } catch {
        // Not a problem+json body, such as one from a proxy: show it as it is.
      }
      throw new RelayError(`${method} ${path}: ${response.status} ${detail}`);
    }
    return (response.status === 204 ? undefined : await response.json()) as T;
  }
}

async function run(relay: RelayClient, jobId: string): Promise<void> {
  let registration = await relay.request<Registration>(
    "POST",
    "/v1/registrations",
    { job_id: jobId, callback_url: CALLBACK_URL, metadata: { order: 42 } },
  );
  const id = registration.id;
  console.log(`registered ${id} (state ${registration.state})`);

  registration = await relay.request<Registration>(
    "GET",
    `/v1/registrations/${id}`,
  );
  const polls = registration.upstream.polls;
  console.log(`read ${id}: state ${registration.state}, ${polls} polls`);

  const attempts = await relay.request<AttemptList>(
    "GET",
    `/v1/registrations/${id}/attempts`,
  );
  console.log(`attempts: ${attempts.attempts.length}`);

  await relay.request<void>("DELETE", `/v1/registrations/${id}`);
  console.log(`deleted ${id}`);
}

async function main(): Promise<number> {
  const baseUrl = process.env.RELAY_URL;
  const apiKey = process.env.RELAY_API_KEY;
  if (!baseUrl || !apiKey) {
    console.error("set RELAY_URL and RELAY_API_KEY first");
    return 2;
  }
  const jobId = process.env.RELAY_JOB_ID ?? DEFAULT_JOB_ID;
  try {
    await run(new RelayClient(baseUrl, apiKey), jobId);
  } catch (error) {
    // fetch reports a failed connection as "fetch failed", with the reason
    // in its cause.
    const failure = error instanceof Error ? error : new Error(String(error));
    const cause =
      failure.cause instanceof Error ? `: ${failure.cause.message}` : "";
    console.error(`request failed: ${failure.message}${cause}`);
    return 1;
  }
  return 0;
}

main().then((code) => {
  process.exitCode = code;
});
