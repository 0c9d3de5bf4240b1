// The seed article's sensor board against thingd (or AWS IoT Core): an ESP32 that reports a
// temperature to its Device Shadow over MQTT with mutual TLS and switches an LED when the
// shadow's desired state asks for it.
//
// NOT RUN ON HARDWARE: this sketch was written against the Arduino-ESP32 core 3.x,
// PubSubClient 2.8 and ArduinoJson 7 APIs and has not been compiled or flashed here. See
// docs/esp32.md.
//
// Setup:
//   1. thingd device provision MyJourneyIoTDevice --out ./MyJourneyIoTDevice --endpoint <host>
//   2. copy ./MyJourneyIoTDevice/aws_certificate.h next to this file (keep it secret: it
//      holds the private key)
//   3. fill in WIFI_SSID / WIFI_PASSWORD below, build and flash.

#include <WiFi.h>
#include <WiFiClientSecure.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>
#include <time.h>

#include "aws_certificate.h"  // THINGD_THING_NAME, THINGD_ENDPOINT, THINGD_MQTT_PORT, the PEMs

static const char *WIFI_SSID = "your-ssid";
static const char *WIFI_PASSWORD = "your-password";
static const int LED_PIN = 2;                     // the on-board LED of most dev kits
static const unsigned long REPORT_EVERY_MS = 5000;

// $aws/things/<thing>/shadow/...
static const String SHADOW = String("$aws/things/") + THINGD_THING_NAME + "/shadow";
static const String TOPIC_UPDATE = SHADOW + "/update";
static const String TOPIC_DELTA = SHADOW + "/update/delta";
static const String TOPIC_REJECTED = SHADOW + "/update/rejected";

WiFiClientSecure net;
PubSubClient mqtt(net);
int temperature = 10;  // the article's test signal: 10, 11, ... 40, 10, ...
unsigned long lastReport = 0;

void reportState(const char *key, const char *value) {
  JsonDocument doc;
  doc["state"]["reported"][key] = value;
  char payload[128];
  size_t n = serializeJson(doc, payload, sizeof(payload));
  mqtt.publish(TOPIC_UPDATE.c_str(), (const uint8_t *)payload, n, false);
}

void reportTemperature() {
  char payload[64];
  snprintf(payload, sizeof(payload), "{\"state\":{\"reported\":{\"temp\":%d}}}", temperature);
  if (mqtt.publish(TOPIC_UPDATE.c_str(), payload)) {
    Serial.printf("reported temp=%d\n", temperature);
  }
  temperature = temperature >= 40 ? 10 : temperature + 1;
}

// update/delta carries {"state":{...what desired says and reported does not...},"version":N}
void onMessage(char *topic, byte *payload, unsigned int length) {
  if (TOPIC_REJECTED == topic) {
    Serial.printf("shadow update rejected: %.*s\n", (int)length, (const char *)payload);
    return;
  }
  if (TOPIC_DELTA != topic) return;
  JsonDocument doc;
  if (deserializeJson(doc, payload, length)) return;
  const char *led = doc["state"]["led"];
  if (led && (strcmp(led, "on") == 0 || strcmp(led, "off") == 0)) {
    digitalWrite(LED_PIN, strcmp(led, "on") == 0 ? HIGH : LOW);
    Serial.printf("led switched %s\n", led);
    reportState("led", led);  // reporting the new state clears the delta
  }
}

void connectWifi() {
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) {
    delay(500);
    Serial.print('.');
  }
  Serial.printf("\nWiFi up, %s\n", WiFi.localIP().toString().c_str());
  // Certificate validity is checked against the clock: set it first.
  configTime(0, 0, "pool.ntp.org");
  while (time(nullptr) < 1700000000) delay(200);
}

void connectMqtt() {
  while (!mqtt.connected()) {
    Serial.printf("connecting to %s:%d as %s\n", THINGD_ENDPOINT, THINGD_MQTT_PORT, THINGD_THING_NAME);
    // The client id must be the thing name: the provisioned policy allows only that.
    if (mqtt.connect(THINGD_THING_NAME)) {
      mqtt.subscribe(TOPIC_DELTA.c_str(), 1);
      mqtt.subscribe(TOPIC_REJECTED.c_str(), 1);
      reportState("led", digitalRead(LED_PIN) == HIGH ? "on" : "off");
      Serial.println("connected");
    } else {
      // -2: TCP/TLS failed (wrong endpoint name, CA, or a refused certificate);
      //  5: not authorized (client id or policy).
      Serial.printf("failed, state %d; retrying in 5 s\n", mqtt.state());
      delay(5000);
    }
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(LED_PIN, OUTPUT);
  connectWifi();
  net.setCACert(AWS_ROOT_CA);          // thingd's root CA instead of Amazon's
  net.setCertificate(AWS_CERTIFICATE);  // the device certificate
  net.setPrivateKey(AWS_PRIVATE_KEY);   // its private key
  mqtt.setServer(THINGD_ENDPOINT, THINGD_MQTT_PORT);
  mqtt.setBufferSize(1024);  // shadow documents exceed PubSubClient's 256-byte default
  mqtt.setKeepAlive(60);     // thingd, like AWS IoT Core, takes 30..1200 s
  mqtt.setCallback(onMessage);
}

void loop() {
  if (WiFi.status() != WL_CONNECTED) connectWifi();
  if (!mqtt.connected()) connectMqtt();
  mqtt.loop();
  if (millis() - lastReport >= REPORT_EVERY_MS) {
    lastReport = millis();
    reportTemperature();
  }
}
