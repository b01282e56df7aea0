// The client side of the `get_client_location` tool: the browser's geolocation.

export interface ClientLocation {
  latitude?: number;
  longitude?: number;
  accuracy_m?: number;
  error?: string;
}

export function locate(timeoutMs = 10_000): Promise<ClientLocation> {
  return new Promise((resolve) => {
    if (!('geolocation' in navigator)) {
      resolve({ error: 'this browser has no geolocation' });
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) =>
        resolve({
          latitude: position.coords.latitude,
          longitude: position.coords.longitude,
          accuracy_m: Math.round(position.coords.accuracy),
        }),
      (error) => resolve({ error: `geolocation refused or unavailable: ${error.message}` }),
      { timeout: timeoutMs, maximumAge: 60_000 },
    );
  });
}
