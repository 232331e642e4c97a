// The pod annotations the agent sets on a meshed pod.

export const INJECT = "linkerd.io/inject";
export const ADMIN_PORT = "tessera.io/proxy-admin-port";
